"""The strategy-specific ``parallel`` keys are validated with path, line and what to set instead."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_hybrid_degree_must_divide_the_kv_heads_of_a_known_qwen3() -> None:
    text = (
        "model:\n  model_name: Qwen/Qwen3-4B-Thinking-2507\n"
        "parallel:\n  strategy: hybrid_parallel\n  world_size: 6\n  enable_distributed: true\n"
        "  tensor_parallel_size: 3\n"
    )
    report = validate_config_text(text)
    [error] = [e for e in report.errors if e.path == "parallel.tensor_parallel_size"]
    assert error.line == 7
    assert error.message.startswith(
        "tensor parallel degree 3 does not divide the 8 KV heads of Qwen3-4B-Thinking-2507; use 2, 4 or 8"
    )


def test_model_parallel_world_size_must_divide_the_kv_heads_of_the_builtin_model() -> None:
    text = (
        "model:\n  model_name: builtin:tiny-qwen3\n"
        "parallel:\n  strategy: model_parallel\n  world_size: 4\n  enable_distributed: true\n"
    )
    report = validate_config_text(text)
    [error] = [e for e in report.errors if "KV heads" in e.message]
    assert error.path == "parallel.world_size" and error.line == 5
    assert "does not divide the 2 KV heads of builtin:tiny-qwen3; use 2" in error.message


def test_a_fitting_hybrid_layout_is_valid_and_unknown_models_wait_for_the_job() -> None:
    for model in ("builtin:tiny-qwen3", "Qwen/Qwen3-8B", "someone/unknown-model"):
        text = (
            f"model:\n  model_name: {model}\n"
            "parallel:\n  strategy: hybrid_parallel\n  world_size: 4\n  enable_distributed: true\n"
            "  tensor_parallel_size: 2\n"
        )
        report = validate_config_text(text)
        assert report.valid, report.errors
        assert not [w for w in report.warnings if w.path.startswith("parallel")], report.warnings
    text = (
        "model:\n  model_name: someone/unknown-model\n"
        "parallel:\n  strategy: model_parallel\n  world_size: 3\n  enable_distributed: true\n"
    )
    assert not [e for e in validate_config_text(text).errors if "KV heads" in e.message]


def test_the_kv_head_table_matches_the_builtin_model() -> None:
    from cryptotune_daemon.config.lora_targets import QWEN3_HEADS, known_kv_heads
    from cryptotune_daemon.training.models import tiny_qwen3_config

    config = tiny_qwen3_config()
    assert QWEN3_HEADS["builtin:tiny-qwen3"] == (config.num_attention_heads, config.num_key_value_heads)
    assert known_kv_heads("Qwen/Qwen3-0.6B") == 8 and known_kv_heads("Qwen/Qwen3-30B-A3B") is None
    assert known_kv_heads("Qwen/Qwen3.5-4B") is None


def test_a_local_model_directory_gives_its_kv_heads(tmp_path: Path) -> None:
    from cryptotune_daemon.config.lora_targets import known_kv_heads

    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_key_value_heads": 6}')
    assert known_kv_heads(str(tmp_path)) == 6


def test_every_strategy_of_the_manual_trains_and_an_unknown_one_is_refused_clearly() -> None:
    from cryptotune_daemon.config.strategies import TRAINABLE_STRATEGIES, refuse_unsupported
    from cryptotune_daemon.errors import CryptotuneError

    manual = {"data_parallel", "model_parallel", "pipeline_parallel", "hybrid_parallel"}
    assert manual <= set(TRAINABLE_STRATEGIES)
    for name in (*TRAINABLE_STRATEGIES, "auto"):
        refuse_unsupported(name)
    with pytest.raises(CryptotuneError, match=r"set parallel\.strategy to one of them or to auto"):
        refuse_unsupported("expert_parallel")
    text = "parallel:\n  strategy: hybrid_parallel\n  world_size: 4\n  enable_distributed: true\n"
    report = validate_config_text(text)
    assert not [w for w in report.warnings if w.path == "parallel.strategy"], report.warnings
