"""Config YAML → data, recording the line of every key and reporting duplicate keys and syntax errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from cryptotune_daemon.config.issues import ConfigIssue, _Collector, _dotted, _Loc

_MERGE_TAG = "tag:yaml.org,2002:merge"

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
