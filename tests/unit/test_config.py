"""Config domain: YAML validation with lines and hints, cross-field checks, warnings, template, schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptotune_daemon.config import (
    SECTIONS,
    ConfigIssue,
    ConfigReport,
    CryptotuneConfig,
    config_json_schema,
    config_template,
    load_config,
    validate_config_text,
)
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

MANUAL_CONFIG = Path(__file__).parent / "fixtures" / "manual_config.yaml"


def _only_error(text: str, **kwargs: Any) -> ConfigIssue:
    report = validate_config_text(text, **kwargs)
    assert not report.valid
    assert report.config is None
    assert len(report.errors) == 1, report.errors
    return report.errors[0]


def _only_warning(text: str, **kwargs: Any) -> ConfigIssue:
    report = validate_config_text(text, **kwargs)
    assert report.valid, report.errors
    assert len(report.warnings) == 1, report.warnings
    return report.warnings[0]


def _valid(text: str, **kwargs: Any) -> ConfigReport:
    report = validate_config_text(text, **kwargs)
    assert report.valid, report.errors
    assert report.config is not None
    return report


def _key(section: str, key: str, value: str) -> str:
    """A one-key document; the key is on line 2."""
    return f"{section}:\n  {key}: {value}\n"


# --- the manual's example, coercion, defaults -------------------------------------------------------------


def test_manual_example_is_valid_with_only_the_remote_code_warning() -> None:
    report = validate_config_text(MANUAL_CONFIG.read_text(), "manual_config.yaml")
    assert report.valid
    assert report.errors == []
    assert [(w.path, w.line) for w in report.warnings] == [("model.trust_remote_code", 4)]
    assert "--allow-remote-code" in report.warnings[0].message
    assert "Qwen3 needs none" in report.warnings[0].message
    config = report.config
    assert config is not None
    assert config.model.trust_remote_code is True
    assert config.training.learning_rate == 0.0002
    assert isinstance(config.training.learning_rate, float)
    assert config.training.num_train_epochs == 3
    assert config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config.lora.alpha == 16
    assert config.precision == "bf16"
    # Keys the manual does not list take their defaults.
    assert config.training.gradient_checkpointing == "auto"
    assert config.training.max_steps == -1
    assert config.training.max_grad_norm == 1.0
    assert config.training.eval_sample_size == 16
    assert config.training.max_new_tokens == 256


def test_yaml_reads_2e_4_as_a_string_and_the_schema_makes_it_a_number() -> None:
    assert yaml.safe_load("x: 2e-4")["x"] == "2e-4"  # the trap the schema exists for
    config = _valid("training:\n  learning_rate: 2e-4\n  weight_decay: '1e-3'\n  save_steps: 5e2\n").config
    assert config is not None
    assert config.training.learning_rate == pytest.approx(0.0002)
    assert config.training.weight_decay == pytest.approx(0.001)
    assert config.training.save_steps == 500
    assert isinstance(config.training.save_steps, int)


def test_integral_numbers_are_accepted_for_integers() -> None:
    config = _valid("lora:\n  rank: '16'\n  alpha: 32\ntraining:\n  seed: 7.0\n").config
    assert config is not None
    assert (config.lora.rank, config.training.seed) == (16, 7)
    assert isinstance(config.training.seed, int)


@pytest.mark.parametrize("text", ["", "{}", "# only a comment\n", "training:\n", "---\n...\n"])
def test_empty_documents_and_sections_take_the_defaults(text: str) -> None:
    report = _valid(text)
    assert report.config == CryptotuneConfig()
    assert report.warnings == []


def test_auto_values_and_case_insensitive_choices() -> None:
    text = (
        "training:\n  per_device_train_batch_size: auto\n  gradient_accumulation_steps: AUTO\n"
        "  gradient_checkpointing: auto\n  lr_scheduler_type: Cosine\nsystem:\n  log_level: debug\n"
    )
    config = _valid(text).config
    assert config is not None
    assert config.training.per_device_train_batch_size == "auto"
    assert config.training.gradient_accumulation_steps == "auto"
    assert config.training.gradient_checkpointing == "auto"
    assert config.training.lr_scheduler_type == "cosine"
    assert config.system.log_level == "DEBUG"


def test_unquoted_no_is_the_strategy_no() -> None:
    # YAML 1.1 reads `no` as false; for a strategy it means "no".
    warning = _only_warning(_key("training", "eval_strategy", "no"))
    assert warning.path == "training.eval_strategy"
    report = validate_config_text(_key("training", "save_strategy", "no"))
    assert report.config is not None
    assert report.config.training.save_strategy == "no"


@pytest.mark.parametrize(
    ("fp16", "bf16", "precision"), [(False, True, "bf16"), (True, False, "fp16"), (False, False, "fp32")]
)
def test_precision(fp16: bool, bf16: bool, precision: str) -> None:
    report = validate_config_text(f"training:\n  fp16: {str(fp16).lower()}\n  bf16: {str(bf16).lower()}\n")
    assert report.config is not None
    assert report.config.precision == precision
    assert report.config.training.precision == precision


# --- YAML-level errors ------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_line_and_column() -> None:
    issue = _only_error("training:\n  seed: 1\n  target: [a, b\nlora:\n  rank: 8\n")
    assert issue.path == ""
    assert issue.line == 4
    assert issue.message.startswith("YAML syntax error at line 4, column 5:")


def test_tabs_are_reported_with_a_fix() -> None:
    issue = _only_error("training:\n\tseed: 1\n")
    assert (issue.path, issue.line) == ("", 2)
    assert "line 2, column 1" in issue.message
    assert "tabs" in issue.message and "spaces" in issue.message


def test_duplicate_key_is_an_error() -> None:
    issue = _only_error("training:\n  seed: 1\n  logging_steps: 5\n  seed: 2\n")
    assert (issue.path, issue.line) == ("training.seed", 4)
    assert "duplicate key 'seed'" in issue.message
    assert "line 2" in issue.message


def test_duplicate_section_is_an_error() -> None:
    issue = _only_error("lora:\n  rank: 8\nlora:\n  rank: 16\n")
    assert (issue.path, issue.line) == ("lora", 3)
    assert "duplicate key 'lora'" in issue.message


@pytest.mark.parametrize(
    ("text", "got"), [("- a\n- b\n", "a list"), ("just text\n", "'just text'"), ("42\n", "42")]
)
def test_top_level_must_be_a_mapping(text: str, got: str) -> None:
    issue = _only_error(text)
    assert (issue.path, issue.line) == ("", 1)
    assert "mapping of sections" in issue.message
    assert f"got {got}" in issue.message


def test_several_documents_are_refused() -> None:
    issue = _only_error("training:\n  seed: 1\n---\nlora:\n  rank: 8\n")
    assert issue.line == 3
    assert "one YAML document" in issue.message


def test_python_tags_are_refused_without_running_anything() -> None:
    issue = _only_error("model: !!python/object/apply:os.system ['true']\n")
    assert issue.line == 1
    assert "remove the tag" in issue.message


def test_forbidden_characters_name_their_position() -> None:
    issue = _only_error("training:\n  seed: 1\x00\n")
    assert issue.line == 2
    assert "U+0000" in issue.message and "line 2, column 10" in issue.message


# --- structure: unknown keys and sections ---------------------------------------------------------------


def test_unknown_key_suggests_the_closest_key() -> None:
    report = validate_config_text("training:\n  learning_rate: 2e-4\n  lerning_rate: 0.1\nlora:\n  rank: 0\n")
    by_path = {issue.path: issue for issue in report.errors}
    assert set(by_path) == {"training.lerning_rate", "lora.rank"}
    assert by_path["training.lerning_rate"].line == 3
    assert "did you mean 'learning_rate'?" in by_path["training.lerning_rate"].message
    assert by_path["lora.rank"].line == 5


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    issue = _only_error(_key("parallel", "zzz", "1"))
    assert (issue.path, issue.line) == ("parallel.zzz", 2)
    assert "strategy, world_size, enable_distributed" in issue.message


def test_key_in_the_wrong_section_names_the_right_one() -> None:
    issue = _only_error("model:\n  model_name: x\ntraining:\n  rank: 8\n")
    assert (issue.path, issue.line) == ("training.rank", 4)
    assert "'rank' belongs in section 'lora'" in issue.message


def test_keys_from_other_tools_are_translated() -> None:
    report = validate_config_text("lora:\n  lora_alpha: 32\ntraining:\n  lora_r: 8\n")
    by_path = {issue.path: issue for issue in report.errors}
    assert "cryptotune calls it 'alpha'" in by_path["lora.lora_alpha"].message
    assert by_path["lora.lora_alpha"].line == 2
    assert "belongs in section 'lora' (as 'rank')" in by_path["training.lora_r"].message


def test_unknown_section_suggests_the_closest_section() -> None:
    issue = _only_error("trainig:\n  seed: 1\n")
    assert (issue.path, issue.line) == ("trainig", 1)
    assert "did you mean 'training'?" in issue.message


def test_unknown_section_without_a_match_lists_the_sections() -> None:
    issue = _only_error("model: {}\nwandb:\n  project: x\n")
    assert (issue.path, issue.line) == ("wandb", 2)
    assert "model, training, lora, data, parallel, system" in issue.message


def test_a_key_at_top_level_is_sent_to_its_section() -> None:
    issue = _only_error("training:\n  seed: 1\nlearning_rate: 0.1\n")
    assert (issue.path, issue.line) == ("learning_rate", 3)
    assert "belongs in section 'training'" in issue.message
    assert "indent it under 'training:'" in issue.message


def test_a_section_must_be_a_mapping() -> None:
    issue = _only_error("lora:\n  rank: 8\ntraining: [1, 2]\n")
    assert (issue.path, issue.line) == ("training", 3)
    assert "must be a mapping" in issue.message and "got a list" in issue.message


# --- values: types, ranges, enums -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("training", "max_seq_length", "abc", "expected an integer, got 'abc'"),
        ("training", "seed", "2.5", "expected an integer, got 2.5"),
        ("lora", "rank", "true", "expected an integer, got true"),
        ("training", "learning_rate", "fast", "expected a number, got 'fast'"),
        ("lora", "dropout", "false", "expected a number, got false"),
        ("training", "learning_rate", ".nan", "expected a finite number, got nan"),
        ("training", "bf16", "'yes please'", "expected true or false, got 'yes please'"),
        ("training", "fp16", "1", "expected true or false, got 1"),
        ("training", "gradient_checkpointing", "maybe", "expected true, false or 'auto', got 'maybe'"),
        (
            "training",
            "per_device_train_batch_size",
            "big",
            "expected a positive integer or 'auto', got 'big'",
        ),
        ("model", "model_name", "12", "expected a string, got 12; put the value in quotes"),
        ("model", "model_revision", "2024-01-01", "expected a string"),
        ("lora", "target_modules", "q_proj", "expected a list of module names"),
        ("data", "max_samples", "all", "expected an integer, got 'all'"),
    ],
)
def test_wrong_types_say_what_was_expected_and_found(
    section: str, key: str, value: str, expected: str
) -> None:
    issue = _only_error(_key(section, key, value))
    assert (issue.path, issue.line) == (f"{section}.{key}", 2)
    assert expected in issue.message
    assert "Input should" not in issue.message  # pydantic's wording stays inside


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("data", "train_split_ratio", "1.5", "must be greater than 0 and at most 1, got 1.5"),
        ("data", "eval_split_ratio", "-0.1", "must be between 0 and 1, got -0.1"),
        ("training", "learning_rate", "0", "must be greater than 0 and less than 1, got 0.0"),
        ("training", "learning_rate", "1.5", "must be greater than 0 and less than 1, got 1.5"),
        ("lora", "rank", "0", "must be between 1 and 1024, got 0"),
        ("lora", "rank", "2048", "must be between 1 and 1024, got 2048"),
        ("lora", "dropout", "1", "must be at least 0 and less than 1, got 1.0"),
        ("lora", "alpha", "0", "must be greater than 0, got 0.0"),
        ("training", "warmup_ratio", "1.0", "must be at least 0 and less than 1, got 1.0"),
        ("training", "weight_decay", "-0.01", "must be at least 0, got -0.01"),
        ("training", "num_train_epochs", "0", "must be greater than 0, got 0.0"),
        ("training", "max_seq_length", "8", "must be between 16 and 131072, got 8"),
        ("training", "logging_steps", "0", "must be at least 1, got 0"),
        ("training", "per_device_train_batch_size", "0", "must be at least 1 (or 'auto'"),
        ("training", "max_steps", "0", "must be -1 (train for num_train_epochs) or a positive number"),
        ("parallel", "world_size", "0", "must be at least 1, got 0"),
        ("data", "max_samples", "0", "must be at least 1, got 0"),
        ("training", "seed", "1e400", "expected an integer, got '1e400'"),
        ("training", "seed", "1" * 5000, "expected an integer of sensible size"),
    ],
)
def test_out_of_range_values_name_the_range(section: str, key: str, value: str, expected: str) -> None:
    issue = _only_error(_key(section, key, value))
    assert (issue.path, issue.line) == (f"{section}.{key}", 2)
    assert expected in issue.message


def test_range_errors_give_an_example() -> None:
    issue = _only_error(_key("lora", "rank", "0"))
    assert issue.message == "must be between 1 and 1024, got 0; for example 8, 16 or 64"


def test_empty_and_malformed_module_lists() -> None:
    issue = _only_error(_key("lora", "target_modules", "[]"))
    assert issue.path == "lora.target_modules"
    assert "must not be empty" in issue.message and "[q_proj, k_proj, v_proj, o_proj]" in issue.message
    issue = _only_error("lora:\n  target_modules:\n    - q_proj\n    - k-proj\n")
    assert (issue.path, issue.line) == ("lora.target_modules", 4)
    assert issue.message.startswith("item 2: expected a module name") and "'k-proj'" in issue.message


@pytest.mark.parametrize(
    ("section", "key", "value", "choices", "hint"),
    [
        ("parallel", "strategy", "fsdp", "data_parallel, sharded_data_parallel, model_parallel", None),
        ("training", "lr_scheduler_type", "cosin", "linear, cosine, cosine_with_restarts", "cosine"),
        ("system", "log_level", "verbose", "DEBUG, INFO, WARNING, ERROR, CRITICAL", None),
        ("data", "data_format", "jsonl", "auto, alpaca, sharegpt, openai", None),
        ("training", "eval_strategy", "sometimes", "no, steps, epoch", None),
        ("training", "save_strategy", "true", "no, steps, epoch", None),
        ("lora", "optimization_strategy", "balance", "auto, memory, balanced, quality", "balanced"),
    ],
)
def test_enums_list_their_choices(section: str, key: str, value: str, choices: str, hint: str | None) -> None:
    issue = _only_error(_key(section, key, value))
    assert (issue.path, issue.line) == (f"{section}.{key}", 2)
    assert f"must be one of {choices}" in issue.message
    if hint is not None:
        assert f"did you mean '{hint}'?" in issue.message
    else:
        assert "did you mean" not in issue.message


def test_errors_in_several_sections_are_reported_together_in_line_order() -> None:
    text = "training:\n  seed: x\n  bf16: maybe\nlora:\n  rank: 0\ndata:\n  data_format: csv\n"
    report = validate_config_text(text)
    assert [(e.path, e.line) for e in report.errors] == [
        ("training.seed", 2),
        ("training.bf16", 3),
        ("lora.rank", 5),
        ("data.data_format", 7),
    ]


# --- cross-field checks ---------------------------------------------------------------------------------


def test_split_ratios_must_add_up_to_one() -> None:
    issue = _only_error("data:\n  train_split_ratio: 0.8\n  eval_split_ratio: 0.1\n")
    assert (issue.path, issue.line) == ("data.eval_split_ratio", 3)
    assert "must add up to 1" in issue.message and "eval_split_ratio: 0.2" in issue.message
    issue = _only_error("data:\n  train_split_ratio: 0.8\n")
    assert (issue.path, issue.line) == ("data.train_split_ratio", 2)
    # Float sums within the tolerance are fine.
    _valid("data:\n  train_split_ratio: 0.7\n  eval_split_ratio: 0.3\n")


def test_fp16_and_bf16_cannot_both_be_true() -> None:
    report = validate_config_text("training:\n  bf16: true\n  fp16: true\n")
    assert [(e.path, e.line) for e in report.errors] == [("training.fp16", 3)]
    assert "fp16 and bf16 are both true" in report.errors[0].message
    assert report.warnings == []  # the fp16 warning would repeat the error


@pytest.mark.parametrize("kind", ["eval", "save"])
def test_step_strategies_need_a_step_count(kind: str) -> None:
    issue = _only_error(f"training:\n  {kind}_strategy: steps\n  {kind}_steps: 0\n")
    assert (issue.path, issue.line) == (f"training.{kind}_steps", 3)
    assert f"must be at least 1 when {kind}_strategy is steps" in issue.message
    config = validate_config_text(f"training:\n  {kind}_strategy: epoch\n  {kind}_steps: 0\n").config
    assert config is not None


def test_evaluation_needs_eval_data() -> None:
    issue = _only_error("data:\n  train_split_ratio: 1.0\n  eval_split_ratio: 0\n")
    assert (issue.path, issue.line) == ("data.eval_split_ratio", 3)
    assert "no eval data" in issue.message and "eval_strategy" in issue.message
    warning = _only_warning(
        "training:\n  eval_strategy: 'no'\ndata:\n  train_split_ratio: 1\n  eval_split_ratio: 0\n"
    )
    assert warning.path == "training.eval_strategy"


def test_world_size_above_one_needs_distributed() -> None:
    issue = _only_error("parallel:\n  world_size: 2\n")
    assert (issue.path, issue.line) == ("parallel.world_size", 2)
    assert "set parallel.enable_distributed: true" in issue.message


def test_world_size_cannot_exceed_the_gpus() -> None:
    text = "parallel:\n  enable_distributed: true\n  world_size: 4\n"
    issue = _only_error(text, gpu_count=2)
    assert (issue.path, issue.line) == ("parallel.world_size", 3)
    assert "this machine has 2 GPU(s)" in issue.message
    _valid(text, gpu_count=4)
    _valid(text, gpu_count=None)  # unknown: checked again when the job is scheduled
    _valid(text, gpu_count=0)  # CPU machine: the job runs on one process


def test_cross_checks_still_run_when_other_keys_are_bad() -> None:
    report = validate_config_text("training:\n  seed: x\n  fp16: true\n")
    assert [(e.path, e.line) for e in report.errors] == [("training.seed", 2), ("training.fp16", 3)]


# --- warnings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "line", "needle"),
    [
        ("model:\n  trust_remote_code: true\n", "model.trust_remote_code", 2, "--allow-remote-code"),
        ("training:\n  learning_rate: 5.0e-3\n", "training.learning_rate", 2, "high for LoRA"),
        ("lora:\n  rank: 64\n  alpha: 16\n", "lora.alpha", 3, "outside 0.5 to 4"),
        ("lora:\n  rank: 4\n  alpha: 64\n", "lora.alpha", 3, "unusually strongly"),
        ("lora:\n  rank: 64\n", "lora.rank", 2, "alpha = 2 × rank (here 128)"),
        ("training:\n  max_seq_length: 65536\n", "training.max_seq_length", 2, "memory"),
        ("training:\n  eval_strategy: 'no'\n", "training.eval_strategy", 2, "no eval loss"),
        ("training:\n  fp16: true\n  bf16: false\n", "training.fp16", 2, "fp16 may overflow"),
        ("data:\n  shuffle_data: false\n", "data.shuffle_data", 2, "shuffle_data: true"),
    ],
)
def test_risky_settings_warn(text: str, path: str, line: int, needle: str) -> None:
    warning = _only_warning(text)
    assert (warning.path, warning.line) == (path, line)
    assert needle in warning.message


@pytest.mark.parametrize(
    "text",
    [
        "training:\n  learning_rate: 1.0e-3\n",
        "lora:\n  rank: 16\n  alpha: 8\n",
        "lora:\n  rank: 16\n  alpha: 64\n",
        "training:\n  max_seq_length: 32768\n",
        "parallel:\n  strategy: auto\n",
    ],
)
def test_boundary_values_do_not_warn(text: str) -> None:
    assert _valid(text).warnings == []


# --- template, schema, dump -----------------------------------------------------------------------------


def test_template_is_valid_without_warnings() -> None:
    report = validate_config_text(config_template())
    assert report.valid, report.errors
    assert report.warnings == []


def test_template_loads_to_exactly_the_defaults() -> None:
    text = config_template()
    assert yaml.safe_load(text) == CryptotuneConfig().model_dump()
    assert load_config(text) == CryptotuneConfig()
    assert "  trust_remote_code: false\n" in text
    assert "  learning_rate: 2.0e-4\n" in text


def test_template_comments_every_key() -> None:
    lines = config_template().splitlines()
    for section, model in SECTIONS.items():
        assert f"{section}:" in lines
        for key in model.model_fields:
            index = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}: "))
            assert lines[index - 1].startswith("  # "), key


def test_json_schema_describes_every_section() -> None:
    schema = config_json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(schema["properties"]) == set(SECTIONS)
    training = schema["$defs"]["TrainingConfig"]["properties"]
    assert "cosine" in training["lr_scheduler_type"]["enum"]
    assert training["learning_rate"]["exclusiveMinimum"] == 0
    assert training["learning_rate"]["default"] == 0.0002
    lora = schema["$defs"]["LoraConfig"]
    assert lora["additionalProperties"] is False
    assert lora["properties"]["rank"]["maximum"] == 1024


def test_load_config_raises_with_file_and_line() -> None:
    with pytest.raises(CryptotuneError) as caught:
        load_config("training:\n  seed: 1\n  lerning_rate: 0.1\nlora:\n  rank: 0\n", "my.yaml")
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    message = caught.value.message
    assert "my.yaml is not a valid cryptotune config (2 errors)" in message
    assert "my.yaml:3: training.lerning_rate: unknown key 'lerning_rate'" in message
    assert "my.yaml:5: lora.rank: must be between 1 and 1024" in message


def test_load_config_ignores_warnings_and_reports_syntax_errors() -> None:
    assert load_config(MANUAL_CONFIG.read_text()).model.trust_remote_code is True
    with pytest.raises(CryptotuneError) as caught:
        load_config("a: [\n", "broken.yaml")
    assert "broken.yaml:2: YAML syntax error" in caught.value.message


# --- robustness -----------------------------------------------------------------------------------------

_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    "text",
    [
        _LAUGHS,
        "a: &a [*a]\n",
        "training: &t\n  seed: 1\nlora: *t\n",
        "base: &b {seed: 3}\ntraining:\n  <<: *b\n  seed: 4\n",
        "[" * 5000 + "]" * 5000,
        "? [a, b]\n: c\n",
        "~: 1\n1: 2\ntrue: 3\n",
        "training: !!binary aGVsbG8=\n",
        "model:\n  model_revision: 2024-13-45\n",
        "training:\n  learning_rate: " + "9" * 400 + ".0\n",
        "training:\n  learning_rate: " + "9" * 400 + "\n",
        "\ufefftraining:\n  seed: 1\n",
        "\x80\x81\ud800",
        "training: {seed: 1, seed: 2}\n",
        "training:\n  {seed: 1}: 2\n",
        "lora:\n  target_modules: [[q_proj], {a: 1}, null]\n",
    ],
)
def test_hostile_documents_give_a_report(text: str) -> None:
    report = validate_config_text(text)
    assert isinstance(report, ConfigReport)
    assert report.valid == (not report.errors)
    for issue in report.errors + report.warnings:
        assert issue.message
        assert issue.line is None or issue.line >= 1


def test_merge_keys_work_and_the_override_wins() -> None:
    config = _valid("training:\n  <<: {seed: 3, logging_steps: 5}\n  seed: 4\n").config
    assert config is not None
    assert (config.training.seed, config.training.logging_steps) == (4, 5)


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["auto", "2e-4", "1e-3", "5e2", "no", "steps", "cosine", "INFO", "q_proj", "", "0.5"]),
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=4))
_KEYS = st.sampled_from(
    [key for model in SECTIONS.values() for key in model.model_fields] + ["lerning_rate", "r"]
)
_SECTION_NAMES = st.sampled_from([*SECTIONS, "trainig", "extra"])
_DOCUMENTS = st.dictionaries(
    _SECTION_NAMES, st.one_of(st.none(), _VALUES, st.dictionaries(_KEYS, _VALUES, max_size=6)), max_size=6
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text_never_raises(text: str) -> None:
    report = validate_config_text(text)
    assert report.valid == (not report.errors)
    assert (report.config is not None) == report.valid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENTS)
def test_fuzz_structured_yaml_never_raises_and_valid_configs_load(document: dict[str, Any]) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    report = validate_config_text(text, gpu_count=2)
    assert report.valid == (not report.errors)
    for issue in report.errors:
        assert issue.line is None or issue.line >= 1
        assert "Input should" not in issue.message
    if report.config is not None:
        assert load_config(text, gpu_count=2) == report.config
    else:
        with pytest.raises(CryptotuneError):
            load_config(text, gpu_count=2)


def test_a_flood_of_errors_lists_the_first_hundred_in_line_order_and_counts_the_rest() -> None:
    text = "training:\n" + "".join(f"  bogus_key_{i}: {i}\n" for i in range(150))
    report = validate_config_text(text)
    assert not report.valid and len(report.errors) == 101
    listed, note = report.errors[:100], report.errors[100]
    assert [issue.line for issue in listed] == list(range(2, 102))
    assert all(issue.message.startswith("unknown key 'bogus_key_") for issue in listed)
    assert note.message == "50 more errors not listed: fix the ones above and validate again"
