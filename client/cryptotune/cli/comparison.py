"""The before/after table: the base model (adapter disabled) and the fine-tuned one on the same eval split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptotune.cli.context import CliContext

if TYPE_CHECKING:
    from rich.table import Table

    from cryptotune.types import Job

COMPARISON_EVENT = "comparison"
_FIGURES = (
    ("eval loss", "eval_loss"),
    ("perplexity", "perplexity"),
    ("thinking-format rate", "thinking_format_rate"),
    ("crypto-term recall", "term_recall"),
    ("length-cap rate", "length_cap_rate"),
)


def _figure(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def comparison_table(base: dict[str, Any], tuned: dict[str, Any]) -> Table:
    """Base and fine-tuned figures side by side, eval loss per difficulty included."""
    from rich.table import Table

    table = Table(title="before / after fine-tuning (same eval split)")
    table.add_column("figure", style="bold")
    table.add_column("base", justify="right")
    table.add_column("fine-tuned", justify="right")
    for label, key in _FIGURES:
        table.add_row(label, _figure(base.get(key)), _figure(tuned.get(key)))
    base_by = base.get("eval_loss_by_difficulty") or {}
    tuned_by = tuned.get("eval_loss_by_difficulty") or {}
    for difficulty in sorted(set(base_by) | set(tuned_by)):
        table.add_row(
            f"eval loss, difficulty {difficulty}",
            _figure(base_by.get(difficulty)),
            _figure(tuned_by.get(difficulty)),
        )
    return table


def print_comparison(cli_ctx: CliContext, job: Job) -> None:
    """Prints the job's before/after table from its ``comparison`` event (nothing when it has none)."""
    found = None
    for event in cli_ctx.client().watch(job.job_id):
        if event.type == COMPARISON_EVENT:
            found = event.data
    if not found:
        return
    cli_ctx.out.print(comparison_table(dict(found.get("base") or {}), dict(found.get("tuned") or {})))
