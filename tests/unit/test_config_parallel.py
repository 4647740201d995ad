"""The strategy-specific ``parallel`` keys are validated with path, line and what to set instead."""

from __future__ import annotations

from cryptotune_daemon.config import validate_config_text
from cryptotune_daemon.config.strategies import tensor_parallel_degree_problem


def test_sharded_data_parallel_is_a_valid_strategy() -> None:
    report = validate_config_text(
        "parallel:\n  strategy: sharded_data_parallel\n  world_size: 2\n  enable_distributed: true\n"
    )
    assert report.valid and not report.warnings, (report.errors, report.warnings)


def test_hybrid_needs_tensor_parallel_groups_that_divide_the_world() -> None:
    text = (
        "parallel:\n  strategy: hybrid_parallel\n  world_size: 4\n  enable_distributed: true\n"
        "  tensor_parallel_size: 3\n"
    )
    report = validate_config_text(text)
    errors = [e for e in report.errors if e.path == "parallel.tensor_parallel_size"]
    assert len(errors) == 1 and errors[0].line == 5
    assert "got 3: use 2" in errors[0].message


def test_pipeline_keys_with_another_strategy_are_flagged() -> None:
    report = validate_config_text("parallel:\n  strategy: data_parallel\n  pipeline_schedule: gpipe\n")
    assert report.valid
    [warning] = [w for w in report.warnings if w.path == "parallel.pipeline_schedule"]
    assert warning.line == 3 and "only used by pipeline_parallel" in warning.message


def test_an_unknown_schedule_names_the_choices() -> None:
    report = validate_config_text("parallel:\n  strategy: pipeline_parallel\n  pipeline_schedule: zigzag\n")
    assert not report.valid
    [error] = report.errors
    assert error.path == "parallel.pipeline_schedule" and "gpipe" in error.message and "1f1b" in error.message


def test_tensor_parallel_degree_must_divide_the_kv_heads() -> None:
    assert tensor_parallel_degree_problem(3, 8, "Qwen3-4B") == (
        "tensor parallel degree 3 does not divide the 8 KV heads of Qwen3-4B; use 2, 4 or 8"
    )
    assert tensor_parallel_degree_problem(4, 8, "Qwen3-4B") is None
