"""report.md shows the base model and the fine-tuned one side by side."""

from __future__ import annotations

from cryptotune_daemon.training.report import BASE_KEYS, REQUIRED_KEYS, comparison_rows, render_markdown


def test_the_report_requires_the_base_figures() -> None:
    assert "base" in REQUIRED_KEYS
    assert BASE_KEYS == (
        "eval_loss",
        "eval_loss_by_difficulty",
        "perplexity",
        "thinking_format_rate",
        "term_recall",
        "length_cap_rate",
    )


def test_markdown_has_base_and_fine_tuned_columns() -> None:
    report = {
        "eval_loss": 2.5,
        "perplexity": 12.18,
        "thinking_format_rate": 0.5,
        "crypto_term_recall": 0.25,
        "length_cap_rate": 0.5,
        "eval_loss_by_difficulty": {"1": 2.0, "3": 3.0},
        "base": {
            "eval_loss": 9.5,
            "perplexity": 13360.0,
            "thinking_format_rate": 0.0,
            "term_recall": 0.0,
            "length_cap_rate": 1.0,
            "eval_loss_by_difficulty": {"1": 9.0, "3": 10.0},
        },
    }
    rows = comparison_rows(report)
    assert rows[0] == ("Eval loss", 9.5, 2.5)
    assert ("Eval loss, difficulty 3", 10.0, 3.0) in rows
    text = render_markdown(report)
    assert "| | base | fine-tuned |" in text
    assert "| Eval loss | 9.5 | 2.5 |" in text
    assert "| Crypto-term recall | 0 | 0.25 |" in text
