"""Generation checks: batched, bounded in tokens (`training.max_generated_tokens`), counted in the report."""

from __future__ import annotations

from typing import Any

import pytest

from cryptotune_daemon.config import config_template, validate_config_text
from cryptotune_daemon.config.schema import generation_record_count
from cryptotune_daemon.training.evaluation import generated_part, left_padded
from cryptotune_daemon.training.report import render_markdown


def test_record_count_fits_every_record_within_the_bound() -> None:
    assert generation_record_count(16, 256, 4096) == 16  # the defaults check all 16 records
    assert generation_record_count(16, 256, 1000) == 3  # 3 × 256 ≤ 1000 < 4 × 256
    assert generation_record_count(2, 6, 4096) == 2  # never more than there are
    assert generation_record_count(8, 300, 299) == 0
    assert generation_record_count(0, 8, 100) == 0


def test_generated_part_ends_at_the_first_stop_token() -> None:
    stop = {7, 9}
    assert generated_part([1, 2, 7, 0, 0], stop) == [1, 2, 7]  # padding after the row ended is dropped
    assert generated_part([1, 9], stop) == [1, 9]
    assert generated_part([1, 2, 3], stop) == [1, 2, 3]  # ran to max_new_tokens
    assert generated_part([], stop) == []


def test_prompts_are_padded_on_the_left() -> None:
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids == [[5, 6, 7], [0, 0, 8]]
    assert mask == [[1, 1, 1], [0, 0, 1]]


def test_the_bound_is_a_config_key_in_the_template() -> None:
    template = config_template()
    assert "  max_generated_tokens: 4096\n" in template
    report = validate_config_text(template)
    assert report.valid and not report.warnings


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5"])
def test_the_bound_is_validated(value: str) -> None:
    report = validate_config_text(f"training:\n  max_generated_tokens: {value}\n")
    assert not report.valid
    assert [(e.path, e.line) for e in report.errors] == [("training.max_generated_tokens", 2)]


def test_a_bound_too_small_for_eval_sample_size_warns() -> None:
    text = "training:\n  eval_sample_size: 8\n  max_new_tokens: 100\n  max_generated_tokens: 350\n"
    report = validate_config_text(text)
    assert report.valid
    [warning] = report.warnings
    assert (warning.path, warning.line) == ("training.max_generated_tokens", 4)
    assert "only 3 of the 8 records" in warning.message and "800" in warning.message


def test_report_md_says_how_many_samples_and_tokens_were_generated() -> None:
    report: dict[str, Any] = {"generation_evaluated": 4, "generation_tokens": 193}
    assert "| Generation checks | 4 samples, 193 tokens generated |" in render_markdown(report)
