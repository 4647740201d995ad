"""Config YAML → report: syntax, shape, types, ranges, cross-field checks and warnings, each with its line."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from cryptotune_daemon.config.lora_targets import qwen3_target_problems
from cryptotune_daemon.config.schema import (
    SECTIONS,
    CryptotuneConfig,
    describe_value,
    generation_record_count,
)
from cryptotune_daemon.config.strategies import NOT_YET_TRAINABLE, strategy_key_issues
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

# A location in the document: section, key, then list indexes.
_Loc = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_SPLIT_TOLERANCE = 1e-6
# Keys from LLaMA-Factory, axolotl and transformers that users carry over; mapped to ours.
_ALIASES: dict[str, str] = {
    "lr": "training.learning_rate",
    "epochs": "training.num_train_epochs",
    "num_epochs": "training.num_train_epochs",
    "batch_size": "training.per_device_train_batch_size",
    "micro_batch_size": "training.per_device_train_batch_size",
    "train_batch_size": "training.per_device_train_batch_size",
    "gradient_accumulation": "training.gradient_accumulation_steps",
    "evaluation_strategy": "training.eval_strategy",
    "cutoff_len": "training.max_seq_length",
    "sequence_len": "training.max_seq_length",
    "max_length": "training.max_seq_length",
    "max_seq_len": "training.max_seq_length",
    "r": "lora.rank",
    "lora_r": "lora.rank",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target": "lora.target_modules",
    "lora_target_modules": "lora.target_modules",
    "model_name_or_path": "model.model_name",
    "base_model": "model.model_name",
    "revision": "model.model_revision",
    "num_gpus": "parallel.world_size",
    "nproc_per_node": "parallel.world_size",
}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_TYPE_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
}


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a config.

    Attributes:
        path: dotted path of the key, e.g. ``training.learning_rate``; ``""`` for the whole document.
        line: 1-based line of that key in the YAML when known.
        message: what is wrong and how to fix it.
    """

    path: str
    line: int | None
    message: str


@dataclass(frozen=True)
class ConfigReport:
    """The outcome of validating a config.

    Attributes:
        valid: true when there are no errors (warnings do not make a config invalid).
        errors: problems that must be fixed.
        warnings: settings that are allowed but risky.
        config: the parsed config, set when ``valid``.
    """

    valid: bool
    errors: list[ConfigIssue]
    warnings: list[ConfigIssue]
    config: CryptotuneConfig | None


if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    # libyaml's parser (in PyYAML's wheels) reads a 1 MiB config 4× faster than the pure-Python one;
    # the constructors and resolvers (YAML 1.1 quirks included) are the same Python code in both.
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """SafeLoader that never raises ValueError while constructing scalars.

    Python refuses int() of more than 4300 digits and PyYAML builds dates like 2024-13-45 with
    ``datetime.date``; both would escape as ValueError. Such scalars stay strings, and validation
    then says what was expected.
    """

    def construct_lenient_int(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.construct_yaml_int(node)
        except ValueError:
            return self.construct_scalar(node)

    def construct_lenient_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.construct_yaml_timestamp(node)
        except (ValueError, OverflowError):
            return self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_lenient_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_lenient_timestamp)


# A report lists at most this many errors, then counts the rest: nobody reads 50,000 "unknown key"
# lines, and working out a did-you-mean for each of them costs seconds of daemon CPU.
MAX_LISTED_ERRORS = 100


@dataclass
class _Collector:
    """Accumulates issues and knows the line of every key seen in the document."""

    lines: dict[_Loc, int] = field(default_factory=dict)
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    # "section" or "section.key" entries whose value was rejected (and replaced by the default).
    failed: set[str] = field(default_factory=set)
    unlisted: int = 0  # errors found beyond MAX_LISTED_ERRORS

    def add(self, issue: ConfigIssue | Callable[[], ConfigIssue]) -> None:
        """Records an error (built only while the list has room: a callable defers the work)."""
        if len(self.errors) >= MAX_LISTED_ERRORS:
            self.unlisted += 1
            return
        self.errors.append(issue() if callable(issue) else issue)

    def listed_errors(self) -> list[ConfigIssue]:
        """The errors in line order, then a note counting those not listed."""
        errors = _sorted(self.errors)
        if self.unlisted:
            errors.append(
                ConfigIssue(
                    "",
                    None,
                    f"{self.unlisted} more error{'s' if self.unlisted != 1 else ''} not listed: "
                    "fix the ones above and validate again",
                )
            )
        return errors

    def usable(self, *paths: str) -> bool:
        """Whether every ``section.key`` given, and its section, was valid."""
        return not any(path in self.failed or path.split(".")[0] in self.failed for path in paths)

    def line_of(self, *locs: _Loc) -> int | None:
        """Line of the first location present; else of the nearest enclosing key present."""
        for loc in locs:
            if loc in self.lines:
                return self.lines[loc]
        for loc in locs:
            for depth in range(len(loc) - 1, 0, -1):
                if loc[:depth] in self.lines:
                    return self.lines[loc[:depth]]
        return None

    def written(self, *locs: _Loc) -> _Loc:
        """The first location that is written in the file (the first one given if none is)."""
        return next((loc for loc in locs if loc in self.lines), locs[0])

    def error(self, loc: _Loc, message: str | Callable[[], str], *also: _Loc) -> None:
        self.add(
            lambda: ConfigIssue(
                _dotted(loc), self.line_of(loc, *also), message() if callable(message) else message
            )
        )

    def warn(self, loc: _Loc, message: str, *also: _Loc) -> None:
        self.warnings.append(ConfigIssue(_dotted(loc), self.line_of(loc, *also), message))


def _dotted(loc: _Loc) -> str:
    # List indexes are reported on the list's own key; the line still points at the item.
    return ".".join(str(part) for part in loc if isinstance(part, str))


def _key_name(key: Any) -> str:
    if isinstance(key, str):
        return key
    return describe_value(key).strip("'")


def _yaml_error(error: Exception, text: str) -> ConfigIssue:
    """Turns a PyYAML exception into an issue naming the line and column."""
    if isinstance(error, yaml.reader.ReaderError):
        before = text[: error.position]
        line = before.count("\n") + 1
        column = error.position - (before.rfind("\n") + 1) + 1
        char = error.character if isinstance(error.character, str) else chr(error.character)
        return ConfigIssue(
            "",
            line,
            f"the file contains a character YAML does not allow (U+{ord(char):04X}) at line {line}, "
            f"column {column}; save the config as plain UTF-8 text",
        )
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        # PyYAML splits its sentences as context ("expected a single document") + problem ("but found ...").
        problem = (error.problem or "").removeprefix("but ") or error.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = ""
        if error.context and error.problem:
            started = f" started at line {error.context_mark.line + 1}" if error.context_mark else ""
            context = f" ({error.context}{started})"
        hint = _yaml_hint(f"{error.problem} {error.context}", _char_at(text, mark))
        return ConfigIssue(
            "", mark.line + 1 if mark else None, f"YAML syntax error{where}: {problem}{context}; {hint}"
        )
    return ConfigIssue("", None, f"the YAML could not be read ({error}); check the indentation and quoting")


def _char_at(text: str, mark: yaml.Mark | None) -> str:
    """The character a parser mark points at ("" past the end or without a mark)."""
    if mark is None:
        return ""
    lines = text.split("\n")
    line = lines[mark.line] if mark.line < len(lines) else ""
    return line[mark.column] if mark.column < len(line) else ""


def _yaml_hint(problem: str, offending: str = "") -> str:
    # libyaml (the C parser) says "found character that cannot start any token" for a tab.
    if "'\\t'" in problem or offending == "\t":
        return "indent with spaces: YAML does not allow tabs"
    if "single document" in problem:
        return "a config is one YAML document: remove the '---' and everything after it"
    if "constructor for the tag" in problem:
        return "remove the tag: a config holds plain YAML values only"
    if "unhashable key" in problem:
        return "keys must be plain names such as 'learning_rate'"
    if "mapping values are not allowed" in problem:
        return "check the indentation, and quote values that contain ': '"
    return "check the indentation and quoting near that line"


def _parse(text: str, out: _Collector) -> tuple[bool, Any]:
    """Composes and constructs the document; returns (ok, data) and records lines and duplicate keys."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return True, None
        # Walk the node tree before constructing: construction flattens merge keys in place.
        _walk(node, out)
        return True, loader.construct_document(node)
    except RecursionError:
        out.errors.append(ConfigIssue("", None, "the YAML is nested too deeply; a config is two levels deep"))
    except Exception as error:  # PyYAML raises several unrelated types; none may escape.
        out.errors.append(_yaml_error(error, text))
    finally:
        if loader is not None:
            loader.dispose()
    return False, None


def _walk(root: yaml.Node, out: _Collector) -> None:
    """Maps each key (and list item) to its line and reports duplicate keys, which PyYAML hides."""
    out.lines[()] = root.start_mark.line + 1
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, _Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        # Aliases share nodes: each is visited once, so a "billion laughs" document stays cheap.
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                name = str(key_node.value)
                key_loc = (*loc, name)
                line = key_node.start_mark.line + 1
                signature = (key_node.tag, name)
                if signature in first_line:
                    out.add(
                        ConfigIssue(
                            _dotted(key_loc),
                            line,
                            f"duplicate key '{name}' (first set on line {first_line[signature]}); "
                            "YAML would keep only the last value: remove one of them",
                        )
                    )
                    # YAML keeps the last value, so later errors about it point here.
                    out.lines[key_loc] = line
                else:
                    first_line[signature] = line
                    out.lines.setdefault(key_loc, line)
                stack.append((value_node, key_loc))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                item_loc = (*loc, index)
                out.lines.setdefault(item_loc, item.start_mark.line + 1)
                stack.append((item, item_loc))


def _close(word: str, candidates: Iterable[str]) -> str | None:
    # Long keys are junk; difflib is quadratic in their length.
    matches = difflib.get_close_matches(word[:100].lower(), list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _owner_of(key: str) -> tuple[str, str] | None:
    """(section, field) a key belongs to: an exact field name, or a known alias from other tools."""
    for section, model in SECTIONS.items():
        if key in model.model_fields:
            return section, key
    if key.lower() in _ALIASES:
        section, name = _ALIASES[key.lower()].split(".")
        return section, name
    return None


def _unknown_section_message(key: str) -> str:
    owner = _owner_of(key)
    if owner is not None:
        section, name = owner
        called = "" if name == key else f" (cryptotune calls it '{name}')"
        return (
            f"'{key}' is not a section: it belongs in section '{section}'{called}; "
            f"indent it under '{section}:'"
        )
    match = _close(key, SECTIONS)
    if match is not None:
        return f"unknown section '{key}'; did you mean '{match}'?"
    return f"unknown section '{key}'; the sections are: {', '.join(SECTIONS)}"


def _unknown_key_message(section: str, key: str) -> str:
    fields = SECTIONS[section].model_fields
    owner = _owner_of(key)
    if owner is not None:
        home, name = owner
        if home == section:
            return f"unknown key '{key}' in section '{section}'; cryptotune calls it '{name}'"
        called = "" if name == key else f" (as '{name}')"
        return f"'{key}' belongs in section '{home}'{called}, not '{section}'; move it there"
    match = _close(key, fields)
    if match is not None:
        return f"unknown key '{key}' in section '{section}'; did you mean '{match}'?"
    for other, model in SECTIONS.items():
        match = _close(key, model.model_fields)
        if other != section and match is not None:
            return f"unknown key '{key}' in section '{section}'; did you mean '{match}' in section '{other}'?"
    return f"unknown key '{key}' in section '{section}'; the keys of '{section}' are: {', '.join(fields)}"


def _split_sections(data: Any, out: _Collector) -> dict[str, dict[str, Any]]:
    """Checks the document's shape; returns each well-formed section with its known keys only."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        out.error(
            (),
            f"a config must be a YAML mapping of sections ({', '.join(SECTIONS)}), "
            f"got {describe_value(data)}; start from `cryptotune init-config`",
        )
        return {}
    sections: dict[str, dict[str, Any]] = {}
    for raw_key, value in data.items():
        key = _key_name(raw_key)
        if key not in SECTIONS:
            out.error((key,), functools.partial(_unknown_section_message, key))
            continue
        if value is None:
            # `training:` with nothing under it: the section's defaults.
            sections[key] = {}
            continue
        if not isinstance(value, dict):
            out.failed.add(key)
            example = next(iter(SECTIONS[key].model_fields))
            out.error(
                (key,),
                f"section '{key}' must be a mapping of keys (e.g. '{example}: ...' indented under "
                f"'{key}:'), got {describe_value(value)}",
            )
            continue
        known: dict[str, Any] = {}
        for raw_name, item in value.items():
            name = _key_name(raw_name)
            if name in SECTIONS[key].model_fields:
                known[name] = item
            else:
                out.error((key, name), functools.partial(_unknown_key_message, key, name))
        sections[key] = known
    return sections


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_BOUND_WORDS = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}


def _range_phrase(info: FieldInfo, error: ErrorDetails) -> str:
    """Range wording such as "must be between 1 and 1024", from the field's bounds."""
    bounds: dict[str, Any] = {}
    for constraint in info.metadata:
        for kind in _BOUND_WORDS:
            if getattr(constraint, kind, None) is not None:
                bounds[kind] = getattr(constraint, kind)
    # Bounds nested inside an Optional are not on the field; the error's context names the one broken.
    if not bounds:
        bounds = {kind: value for kind, value in (error.get("ctx") or {}).items() if kind in _BOUND_WORDS}
    if "ge" in bounds and "le" in bounds:
        return f"must be between {bounds['ge']} and {bounds['le']}"
    parts = [f"{_BOUND_WORDS[kind]} {bounds[kind]}" for kind in _BOUND_WORDS if kind in bounds]
    return "must be " + " and ".join(parts) if parts else "is out of range"


def _example_text(example: Any) -> str:
    if isinstance(example, list):
        return "[" + ", ".join(str(item) for item in example) + "]"
    return describe_value(example)


def _examples(info: FieldInfo) -> str:
    shown = [_example_text(example) for example in info.examples or [] if example is not None]
    if not shown:
        return ""
    listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
    return f"; for example {listed}"


def _choices(info: FieldInfo) -> list[str]:
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return [str(choice) for choice in get_args(annotation)]
    return []


def _field_message(model: type[BaseModel], error: ErrorDetails) -> str:
    """A plain sentence for one pydantic error; pydantic's own wording never reaches users."""
    kind = error["type"]
    value = error.get("input")
    name = str(error["loc"][0])
    info = model.model_fields[name]
    item = next((part for part in error["loc"][1:] if isinstance(part, int)), None)
    prefix = f"item {item + 1}: " if item is not None else ""
    if kind.startswith("ct_"):
        return prefix + error["msg"]
    if kind in _RANGE_ERRORS:
        return f"{prefix}{_range_phrase(info, error)}, got {describe_value(value)}{_examples(info)}"
    if kind == "literal_error":
        choices = _choices(info)
        message = f"must be one of {', '.join(choices)}; got {describe_value(value)}"
        match = _close(value, choices) if isinstance(value, str) else None
        return message + (f"; did you mean '{match}'?" if match else "")
    if kind == "too_short":
        return f"must not be empty{_examples(info)}"
    if kind == "string_too_short":
        return "must not be empty" + _examples(info)
    if kind == "string_pattern_mismatch":
        return f"{prefix}has an invalid form, got {describe_value(value)}{_examples(info)}"
    if kind in _TYPE_MESSAGES:
        return f"{prefix}{_TYPE_MESSAGES[kind]}, got {describe_value(value)}"
    return f"{prefix}invalid value {describe_value(value)} ({error['msg']})"


def _validate_sections(raw: dict[str, dict[str, Any]], out: _Collector) -> CryptotuneConfig:
    """Validates each section on its own, so one bad key does not hide the errors of the others.

    Keys that fail take their defaults in the returned config and are recorded in ``out.failed``,
    so that cross-field checks and warnings can still run on the keys that are fine.
    """
    parsed: dict[str, BaseModel] = {}
    for section, model in SECTIONS.items():
        values = raw.get(section, {})
        try:
            parsed[section] = model.model_validate(values)
            continue
        except ValidationError as failure:
            for error in failure.errors():
                name = str(error["loc"][0]) if error["loc"] else ""
                if name not in model.model_fields:  # pragma: no cover - unknown keys were removed earlier
                    out.failed.add(section)
                    out.error((section,), f"invalid section: {error['msg']}")
                    continue
                out.failed.add(f"{section}.{name}")
                out.error((section, *error["loc"]), _field_message(model, error))
        good = {key: value for key, value in values.items() if f"{section}.{key}" not in out.failed}
        try:
            parsed[section] = model.model_validate(good)
        except ValidationError:  # pragma: no cover - fields are validated independently
            out.failed.add(section)
            parsed[section] = model()
    return CryptotuneConfig.model_validate(parsed)


def _cross_checks(config: CryptotuneConfig, out: _Collector, gpu_count: int | None) -> None:
    """Rules that span keys; each runs only when every key it reads is valid."""
    training, data, parallel = config.training, config.data, config.parallel
    if out.usable("lora.target_modules", "model.model_name"):
        for position, message in qwen3_target_problems(config.model.model_name, config.lora.target_modules):
            out.error(("lora", "target_modules", position), message)
    if out.usable("data.train_split_ratio", "data.eval_split_ratio"):
        total = data.train_split_ratio + data.eval_split_ratio
        if abs(total - 1.0) > _SPLIT_TOLERANCE:
            out.error(
                out.written(("data", "eval_split_ratio"), ("data", "train_split_ratio")),
                f"train_split_ratio ({_number_text(data.train_split_ratio)}) + eval_split_ratio "
                f"({_number_text(data.eval_split_ratio)}) = {total:.6g}, but the two must add up to 1; "
                f"for example set eval_split_ratio: {1.0 - data.train_split_ratio:.6g}",
                ("data", "train_split_ratio"),
            )
    if out.usable("training.fp16", "training.bf16") and training.fp16 and training.bf16:
        out.error(
            ("training", "fp16"),
            "fp16 and bf16 are both true; pick one: keep bf16: true (Qwen3 is trained in bf16) "
            "and set fp16: false",
            ("training", "bf16"),
        )
    for kind in ("eval", "save"):
        strategy = training.eval_strategy if kind == "eval" else training.save_strategy
        steps = training.eval_steps if kind == "eval" else training.save_steps
        if (
            out.usable(f"training.{kind}_strategy", f"training.{kind}_steps")
            and strategy == "steps"
            and steps < 1
        ):
            out.error(
                ("training", f"{kind}_steps"),
                f"must be at least 1 when {kind}_strategy is steps, got {steps}; for example set "
                f"{kind}_steps: 500, or set {kind}_strategy to epoch",
                ("training", f"{kind}_strategy"),
            )
    if (
        out.usable("training.eval_strategy", "data.eval_split_ratio")
        and training.eval_strategy != "no"
        and data.eval_split_ratio <= 0
    ):
        out.error(
            ("data", "eval_split_ratio"),
            f"is 0, so there is no eval data, but training.eval_strategy is '{training.eval_strategy}'; "
            'set eval_split_ratio: 0.1 and train_split_ratio: 0.9, or set training.eval_strategy: "no"',
        )
    if not out.usable("parallel.world_size", "parallel.enable_distributed"):
        return
    if out.usable("parallel.strategy", "parallel.tensor_parallel_size", "parallel.pipeline_micro_batches"):
        fields = type(parallel).model_fields
        changed = {key for key, info in fields.items() if getattr(parallel, key) != info.default}
        for key, message, is_error in strategy_key_issues(
            parallel.strategy,
            parallel.world_size,
            parallel.tensor_parallel_size,
            parallel.pipeline_micro_batches,
            changed,
        ):
            (out.error if is_error else out.warn)(("parallel", key), message, ("parallel", "strategy"))
    if parallel.world_size > 1 and not parallel.enable_distributed:
        out.error(
            ("parallel", "world_size"),
            f"is {parallel.world_size} but enable_distributed is false; set parallel.enable_distributed: "
            "true to train on several GPUs, or set world_size: 1",
        )
    if parallel.enable_distributed and gpu_count is not None and 0 < gpu_count < parallel.world_size:
        out.error(
            ("parallel", "world_size"),
            f"is {parallel.world_size} but this machine has {gpu_count} GPU(s); "
            f"set world_size to at most {gpu_count}",
        )


def _warnings(config: CryptotuneConfig, out: _Collector) -> None:
    """Settings that are valid but likely to hurt a run."""
    training, lora = config.training, config.lora
    if out.usable("model.trust_remote_code") and config.model.trust_remote_code:
        out.warn(
            ("model", "trust_remote_code"),
            "is true, but remote code stays off unless the daemon was started with --allow-remote-code; "
            "Qwen3 needs none, so set it to false",
        )
    if out.usable("training.learning_rate") and training.learning_rate > 1e-3:
        out.warn(
            ("training", "learning_rate"),
            f"{training.learning_rate:g} is high for LoRA and may make training diverge; 1e-4 to 5e-4 "
            "is typical (the default is 2.0e-4)",
        )
    if out.usable("training.max_seq_length") and training.max_seq_length > 32768:
        out.warn(
            ("training", "max_seq_length"),
            f"{training.max_seq_length} tokens need a lot of GPU memory (activations grow with the "
            "sequence length); lower it unless your samples are that long",
        )
    if out.usable("training.eval_strategy") and training.eval_strategy == "no":
        out.warn(
            ("training", "eval_strategy"),
            "is 'no': the report will have no eval loss; set eval_strategy: steps to watch for overfitting",
        )
    if out.usable("training.fp16", "training.bf16") and training.fp16 and not training.bf16:
        out.warn(
            ("training", "fp16"),
            "Qwen3 is trained in bf16; fp16 may overflow. Prefer bf16: true on GPUs that support it "
            "(Ampere or newer)",
        )
    ratio = lora.alpha / lora.rank
    if out.usable("lora.alpha", "lora.rank") and not 0.5 <= ratio <= 4.0:
        strength = "weakly" if ratio < 0.5 else "strongly"
        out.warn(
            out.written(("lora", "alpha"), ("lora", "rank")),
            f"alpha / rank = {lora.alpha:g} / {lora.rank} = {ratio:.3g} is outside 0.5 to 4, so the "
            f"adapter's updates are scaled unusually {strength}; alpha = 2 × rank "
            f"(here {2 * lora.rank}) is a common choice",
            ("lora", "rank"),
        )
    if out.usable("lora.optimization_strategy") and lora.optimization_strategy in ("balanced", "quality"):
        out.warn(
            ("lora", "optimization_strategy"),
            f"'{lora.optimization_strategy}' plans exactly like 'auto' (the largest micro-batch that fits, "
            "gradient checkpointing only when needed); only 'memory' changes the plan. Set it to auto, or "
            "to memory to trade speed for memory",
        )
    strategy = config.parallel.strategy
    if out.usable("parallel.strategy") and strategy in NOT_YET_TRAINABLE:
        out.warn(
            ("parallel", "strategy"),
            f"'{strategy}': this strategy will be refused when a job is submitted; use data_parallel, "
            "sharded_data_parallel or auto",
        )
    generation_keys = (
        "training.eval_sample_size",
        "training.max_new_tokens",
        "training.max_generated_tokens",
    )
    if out.usable(*generation_keys):
        wanted, each = training.eval_sample_size, training.max_new_tokens
        checked = generation_record_count(wanted, each, training.max_generated_tokens)
        if checked < wanted:
            out.warn(
                out.written(("training", "max_generated_tokens"), ("training", "eval_sample_size")),
                f"{training.max_generated_tokens} tokens cover only {checked} of the {wanted} records of "
                f"eval_sample_size at max_new_tokens {each} each; raise max_generated_tokens to "
                f"{wanted * each} to check them all",
                ("training", "eval_sample_size"),
            )
    if out.usable("data.shuffle_data") and not config.data.shuffle_data:
        out.warn(
            ("data", "shuffle_data"),
            "is false: the split follows the file order, so train and eval may differ systematically "
            "(by topic or difficulty); set shuffle_data: true unless the order is deliberate",
        )


def _sorted(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda issue: (issue.line is None, issue.line or 0))


def validate_config_text(
    text: str, source_name: str = "config.yaml", *, gpu_count: int | None = None
) -> ConfigReport:
    """Validates config YAML and reports every problem with its path and line.

    Never raises on bad input: syntax errors, wrong shapes, unknown keys, bad values and
    inconsistent settings all become errors in the report.

    Args:
        text: the YAML text.
        source_name: the file name, for callers that print issues (unused in the issues themselves).
        gpu_count: GPUs on the machine that will train, when known; checks parallel.world_size.

    Returns:
        The report; ``config`` is set when there are no errors.
    """
    del source_name  # Issues carry path and line; callers add the file name when they print them.
    out = _Collector()
    if not isinstance(text, str):
        out.errors.append(ConfigIssue("", None, f"expected YAML text, got {type(text).__name__}"))
        return ConfigReport(False, out.errors, [], None)
    ok, data = _parse(text, out)
    if not ok:
        return ConfigReport(False, out.listed_errors(), [], None)
    raw = _split_sections(data, out)
    config = _validate_sections(raw, out)
    _cross_checks(config, out, gpu_count)
    _warnings(config, out)
    valid = not out.errors
    return ConfigReport(valid, out.listed_errors(), _sorted(out.warnings), config if valid else None)


def format_issue(issue: ConfigIssue, source_name: str) -> str:
    """Renders an issue as ``source:line: path: message`` (line and path left out when unknown)."""
    where = f"{source_name}:{issue.line}" if issue.line is not None else source_name
    path = f" {issue.path}:" if issue.path else ""
    return f"{where}:{path} {issue.message}"


def load_config(
    text: str, source_name: str = "config.yaml", *, gpu_count: int | None = None
) -> CryptotuneConfig:
    """Parses and validates a config, for code that needs a config or an error.

    Args:
        text: the YAML text.
        source_name: the file name used in the error message.
        gpu_count: GPUs on the machine that will train, when known.

    Returns:
        The validated config (warnings are dropped; use :func:`validate_config_text` to see them).

    Raises:
        CryptotuneError: ``CONFIG_INVALID``, listing each error as ``source:line: path: message``.
    """
    report = validate_config_text(text, source_name, gpu_count=gpu_count)
    if report.config is None:
        count = len(report.errors)
        lines = [
            f"{source_name} is not a valid cryptotune config ({count} error{'s' if count != 1 else ''}):"
        ]
        lines.extend(format_issue(issue, source_name) for issue in report.errors)
        raise CryptotuneError(ErrorCode.CONFIG_INVALID, "\n".join(lines))
    return report.config


def dump_config(config: CryptotuneConfig) -> str:
    """Writes a config as YAML that :func:`load_config` reads back to an equal config.

    Args:
        config: the config, typically after ``auto`` settings were resolved.

    Returns:
        YAML text with every section and key, in the template's order.
    """
    values = config.model_dump(mode="python")
    # Large width: a long model path must not be folded over two lines.
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True, default_flow_style=False, width=10_000)
