"""Property-based fuzz of the domain functions behind inspect-data, validate-config, train and submit.

For every generated input the answer is a result or a clear error that names the place (a record's
line, index and field; a config's key path) — never an unexpected exception, never text a client
cannot receive. Each property runs a few hundred examples in ``make test`` and thousands in
``make test-slow``. Failing examples Hypothesis found are kept as plain tests in
``tests/unit/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptotune_daemon.config import SECTIONS, load_config, validate_config_text
from cryptotune_daemon.config.system_paths import choose_output_dir
from cryptotune_daemon.data.readers import RawRecord, convert_record, iter_records
from cryptotune_daemon.data.records import Record, RecordProblem
from cryptotune_daemon.data.template import render_record
from cryptotune_daemon.data.text_checks import has_bad_text
from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.submission import SubmitRequest, prepare
from cryptotune_daemon.services.error_catalog import bounded_message
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore
from cryptotune_daemon.training.models import ModelSource, model_facts
from cryptotune_daemon.training.planner import DeviceInfo, plan_training
from cryptotune_daemon.worker.config_mapping import plan_request, trainer_settings

FAST = 200
THOROUGH = 2000
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def properties(
    strategy: st.SearchStrategy[Any], fast: int = FAST, thorough: int = THOROUGH
) -> Callable[[Callable[..., None]], tuple[Callable[..., None], Callable[..., None]]]:
    """Runs one property twice: ``fast`` examples in make test, ``thorough`` ones marked slow."""

    def make(check: Callable[..., None]) -> tuple[Callable[..., None], Callable[..., None]]:
        quick = settings(max_examples=fast, deadline=None, suppress_health_check=_HEALTH)(
            given(strategy)(check)
        )
        long = settings(max_examples=thorough, deadline=None, suppress_health_check=_HEALTH)(
            given(strategy)(check)
        )
        return quick, pytest.mark.slow(long)

    return make


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- (a) records of every format ----------------------------------------------------------------------

NASTY = [
    "\ud800",
    "\udfff",
    "\x00",
    "\x07",
    "\x1b[31m",
    "\r\n",
    "\r",
    "\t",
    "\u202e",  # right-to-left override
    "\u200f",
    "مرحبا",
    "🔐🧮",
    "\ufeff",
    "<|im_end|>",
    "<|im_start|>",
    "<think>",
    "</think>",
    "<thinking>",
    "{}",
    "\\u0000",
    "\U0010ffff",
]
any_char = st.characters(categories=None, codec=None)  # surrogates and controls included
texts = st.one_of(
    st.text(any_char, max_size=40),
    st.lists(st.sampled_from(NASTY) | st.text(any_char, max_size=5), max_size=8).map("".join),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "密", "\ud800", "\x00"]), st.integers(1, 20_000)),
)
scalars = st.one_of(texts, st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
maybe_text = texts | json_values
ALPACA_KEYS = [
    "instruction",
    "input",
    "output",
    "thinking",
    "crypto_terms",
    "difficulty",
    "system",
    "history",
]


def alpaca_records() -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(ALPACA_KEYS) | texts, maybe_text, max_size=8)


def turn(role_key: str, text_key: str, roles: list[str]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {role_key: st.sampled_from(roles) | texts},
        optional={text_key: maybe_text, "reasoning_content": maybe_text},
    )


records = st.one_of(
    alpaca_records(),
    st.fixed_dictionaries(
        {"instruction": texts, "output": texts}, optional={"thinking": texts, "input": texts}
    ),
    st.fixed_dictionaries(
        {"messages": st.lists(turn("role", "content", ["user", "assistant", "system", "tool"]), max_size=4)}
    ),
    st.fixed_dictionaries(
        {
            "conversations": st.lists(
                turn("from", "value", ["human", "gpt", "system", "observation"]), max_size=4
            )
        }
    ),
    json_values,
)


def check_record(value: Any) -> None:
    result = convert_record(RawRecord(index=3, line=9, value=value))
    if isinstance(result, Record):
        for text in (result.instruction, result.input, result.output, result.reasoning, *result.crypto_terms):
            assert not has_bad_text(text) and "\r\n" not in text
        rendered = render_record(result)
        assert encodable(rendered.prompt + rendered.trained)
        json.dumps(result.extra, ensure_ascii=False).encode("utf-8")
        return
    assert result, "a refused record has at least one problem"
    keys = {str(k) for k in value} if isinstance(value, dict) else set()
    for problem in result:
        assert (problem.line, problem.index) == (9, 3)
        assert problem.message and encodable(problem.message), problem
        # The field is the record's key (escaped when it holds bad text) or a required field it lacks.
        assert encodable(problem.field), problem
        assert (
            problem.field in keys
            or problem.field.isidentifier()
            or "\\" in problem.field
            or not problem.field
        )


test_records_convert_or_name_the_field, test_records_convert_or_name_the_field_thorough = properties(records)(
    check_record
)


def check_file(tmp_path: Path, value: Any, as_array: bool) -> None:
    path = tmp_path / ("d.json" if as_array else "d.jsonl")
    # ensure_ascii: surrogates and controls travel as \\u escapes, as exporters write them.
    body = json.dumps([value, value]) if as_array else json.dumps(value) + "\n" + json.dumps(value) + "\n"
    path.write_text(body, encoding="utf-8")
    try:
        items = list(iter_records(path, display_name="d.json"))
    except CryptotuneError as error:  # a whole-file problem
        assert "d.json" in error.message and encodable(bounded_message(error.message))
        return
    indices = {item.index for item in items}
    assert indices == {0, 1}  # nothing dropped silently
    for item in items:
        if isinstance(item, RecordProblem):
            assert item.line >= 1 and encodable(item.message)


@pytest.fixture
def file_check(tmp_path: Path) -> Callable[[Any, bool], None]:
    return lambda value, as_array: check_file(tmp_path, value, as_array)


@settings(max_examples=FAST, deadline=None, suppress_health_check=_HEALTH)
@given(records, st.booleans())
def test_files_of_records_are_read_whole(
    file_check: Callable[[Any, bool], None], value: Any, as_array: bool
) -> None:
    file_check(value, as_array)


@pytest.mark.slow
@settings(max_examples=THOROUGH, deadline=None, suppress_health_check=_HEALTH)
@given(records, st.booleans())
def test_files_of_records_are_read_whole_thorough(
    file_check: Callable[[Any, bool], None], value: Any, as_array: bool
) -> None:
    file_check(value, as_array)


# -- (b) YAML configs built from the schema, with mutated values and keys -----------------------------

SCHEMA_KEYS = [(section, name) for section, model in SECTIONS.items() for name in model.model_fields]
config_values = st.one_of(
    scalars,
    st.sampled_from(["auto", "2e-4", "1e400", "nan", "-1", "0", "DEBUG", "yes", "no", "all-linear", "./out"]),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.lists(st.sampled_from(["q_proj", "gate_prj", "all-linear", "x.y", ""]) | texts, max_size=4),
    st.dictionaries(texts, scalars, max_size=2),
)
mutated_keys = st.one_of(
    st.sampled_from(SCHEMA_KEYS),
    st.tuples(st.sampled_from(list(SECTIONS)), texts),
    st.tuples(texts, st.sampled_from([name for _, name in SCHEMA_KEYS])),
)
configs = st.dictionaries(mutated_keys, config_values, max_size=8)


def config_text(entries: dict[tuple[str, str], Any]) -> str | None:
    tree: dict[str, dict[str, Any]] = {}
    for (section, name), value in entries.items():
        tree.setdefault(section, {})[name] = value
    text = yaml.safe_dump(tree, allow_unicode=True)
    return text if encodable(text) else None  # text that UTF-8 cannot carry never reaches the daemon


FACTS: dict[str, Any] = {}
GPU = DeviceInfo(
    kind="cuda", name="test GPU", memory_total_mb=81_920, memory_budget_mb=70_000, bf16_supported=True
)


def check_config(entries: dict[tuple[str, str], Any]) -> None:
    text = config_text(entries)
    if text is None:
        return
    report = validate_config_text(text)
    known = set(SECTIONS)
    for issue in [*report.errors, *report.warnings]:
        assert issue.message and encodable(bounded_message(issue.message)), issue
        assert issue.path == "" or issue.path.split(".")[0] in known or issue.line is not None, issue
    if not report.valid:
        with pytest.raises(CryptotuneError):
            load_config(text)
        return
    assert report.config is not None
    # The dry-run path: the planner and the trainer settings accept every valid config.
    facts = FACTS.setdefault("tiny", model_facts(ModelSource(name="builtin:tiny-qwen3", kind="builtin")))
    plan = plan_training(plan_request(report.config, 1), facts, GPU, [200, 300, 900])
    trainer_settings(report.config, plan)


test_configs_validate_or_name_the_key, test_configs_validate_or_name_the_key_thorough = properties(configs)(
    check_config
)


# -- (c) submission request fields at their limits ----------------------------------------------------

path_like = st.one_of(
    texts,
    st.sampled_from(["", "/", ".", "..", "~", "~/x", "/tmp/x", "rel/dir", "a" * 300, "/" + "a/" * 2100]),
    st.builds(lambda n: "/tmp/" + "d" * n, st.integers(0, 5000)),
)
ids = st.one_of(texts, st.sampled_from(["", "ok-id", "a" * 64, "a" * 65, "x@1", "x@" + "9" * 5000, "../x"]))
requests = st.fixed_dictionaries(
    {
        "request_id": ids,
        "output_dir": path_like,
        "pipeline_id": ids,
        "resume": ids,
        "client_cwd": path_like,
        "remote": st.booleans(),
        "system_output_dir": st.none() | path_like,
        "system_logging_dir": st.none() | path_like,
        "system_cache_dir": st.none() | path_like,
    }
)


@pytest.fixture
def submit_env(tmp_path: Path) -> Callable[[dict[str, Any]], None]:
    settings_ = DaemonSettings(state_dir=tmp_path / "state", listen=(), allowed_output_roots=(tmp_path,))
    blobs = BlobStore(tmp_path / "blobs")
    with blobs.writer() as writer:
        writer.write(b'{"instruction": "q", "output": "a"}\n')
        digest = writer.commit().digest
    store = JobStore(tmp_path / "jobs.sqlite3")

    def submit(fields: dict[str, Any]) -> None:
        config: dict[str, Any] = {"model": {"model_name": "builtin:tiny-qwen3"}}
        for key in ("output_dir", "logging_dir", "cache_dir"):
            if fields[f"system_{key}"] is not None:
                config.setdefault("system", {})[key] = fields[f"system_{key}"]
        text = yaml.safe_dump(config, allow_unicode=True)
        if not all(encodable(v) for v in (text, *(str(v) for v in fields.values()))):
            return  # protobuf strings are UTF-8: such text never arrives
        request = SubmitRequest(
            request_id=fields["request_id"],
            data_digest=digest,
            data_name="d.jsonl",
            config_yaml=text,
            config_name="c.yaml",
            output_dir=fields["output_dir"],
            pipeline_id=fields["pipeline_id"],
            resume=fields["resume"],
            dry_run=True,
            client_cwd=fields["client_cwd"],
            remote=fields["remote"],
        )
        try:
            prepared = prepare(request, settings=settings_, store=store, blobs=blobs, gpu_count=0)
        except CryptotuneError as error:
            assert error.message and encodable(bounded_message(error.message))
            return
        assert prepared.output_dir.is_absolute()

    return submit


@settings(max_examples=FAST, deadline=None, suppress_health_check=_HEALTH)
@given(requests)
def test_submissions_prepare_or_refuse_clearly(
    submit_env: Callable[[dict[str, Any]], None], fields: dict[str, Any]
) -> None:
    submit_env(fields)


@pytest.mark.slow
@settings(max_examples=THOROUGH, deadline=None, suppress_health_check=_HEALTH)
@given(requests)
def test_submissions_prepare_or_refuse_clearly_thorough(
    submit_env: Callable[[dict[str, Any]], None], fields: dict[str, Any]
) -> None:
    submit_env(fields)


def check_output_choice(fields: dict[str, Any]) -> None:
    try:
        choice = choose_output_dir(
            fields["output_dir"], fields["system_output_dir"], fields["client_cwd"], remote=fields["remote"]
        )
    except CryptotuneError as error:
        assert error.message
        return
    if fields["output_dir"]:
        assert choice.path == fields["output_dir"]
    else:
        assert choice.path.startswith("/")


test_output_dir_choice_is_total, test_output_dir_choice_is_total_thorough = properties(requests)(
    check_output_choice
)
