"""Human-readable rendering of SDK results with rich (plain text when piped)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cryptotune import types as t

PROMPT_MARKER = "── prompt (masked, no loss) ──"
TRAINED_MARKER = "── trained (carries the loss) ──"
PLAIN_LEGEND = "the ── lines mark the prompt (masked, no loss) and the trained part (carries the loss)"


def _where(line: int | None) -> str:
    return f"line {line}" if line else "—"


def validation(console: Console, name: str, result: t.ValidationResult) -> None:
    """Prints config errors and warnings as tables, then a verdict."""
    for title, issues, style in (("Errors", result.errors, "red"), ("Warnings", result.warnings, "yellow")):
        if not issues:
            continue
        table = Table(title=f"{title} in {name}", title_style=f"bold {style}", show_lines=False)
        table.add_column("line", justify="right", style="dim")
        table.add_column("path", style=style)
        table.add_column("problem")
        for issue in issues:
            table.add_row(_where(issue.line), issue.path or "(document)", Text(issue.message))
        console.print(table)
    if result.valid:
        suffix = f" with {len(result.warnings)} warning(s)" if result.warnings else ""
        console.print(Text.assemble(("✓ ", "bold green"), f"{name} is valid{suffix}"))
    else:
        console.print(Text.assemble(("✗ ", "bold red"), f"{name} has {len(result.errors)} error(s)"))


def gpus(console: Console, result: t.GpuList) -> None:
    """Prints the GPU table and the recommendation."""
    if result.gpus:
        table = Table(title="GPUs")
        for column in ("#", "name", "memory used / total", "util", "temp", "uuid", "job"):
            table.add_column(column)
        for g in result.gpus:
            table.add_row(
                str(g.index),
                g.name,
                f"{g.memory_used_mb:,} / {g.memory_total_mb:,} MiB",
                f"{g.utilization_percent}%" if g.utilization_percent >= 0 else "?",
                f"{g.temperature_c}°C" if g.temperature_c >= 0 else "?",
                g.uuid,
                g.owner_job_id or "free",
            )
        console.print(table)
    if result.note:
        console.print(Text(result.note, style="yellow"))
    if result.nodes is not None:
        cluster(console, result)
    r = result.recommendation
    table = Table(title=f"Recommendation for {r.model}", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    table.add_row("strategy", f"{r.strategy} × {r.world_size}")
    table.add_row("per-device batch size", str(r.per_device_batch_size))
    table.add_row("gradient accumulation", str(r.gradient_accumulation_steps))
    table.add_row("precision", r.precision)
    table.add_row("gradient checkpointing", "on" if r.gradient_checkpointing else "off")
    console.print(table)
    console.print(Text(r.reason, style="dim"))


def _held(node: t.ClusterNode) -> str:
    if not node.held_by:
        return "free"
    parts = []
    for hold in node.held_by:
        what = ", ".join(
            f"{_amount(value)} {unit}" for value, unit in ((hold.gpus, "GPU"), (hold.cpus, "CPU")) if value
        )
        parts.append(f"{hold.job_id or 'another Ray user'}: {what or 'nothing'}")
    return "; ".join(parts)


def _amount(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _node_gpus(node: t.ClusterNode) -> str:
    if not node.gpus:
        return "none"
    lines = []
    for g in node.gpus:
        memory = (
            f"{g.memory_used_mb:,} / {g.memory_total_mb:,} MiB"
            if g.memory_total_mb >= 0
            else "memory unknown"
        )
        owner = f" — {g.owner_job_id}" if g.owner_job_id else ""
        lines.append(f"#{g.index} {g.name}, {memory}{owner}")
    return "\n".join(lines)


def cluster(console: Console, result: t.GpuList) -> None:
    """Prints the Ray cluster's nodes: GPUs, memory, CPUs and the jobs holding them."""
    nodes = result.nodes or []
    table = Table(title=f"Ray cluster {result.ray_address}", show_lines=True)
    for column in ("node", "address", "GPUs", "CPUs", "held by"):
        table.add_column(column)
    for node in nodes:
        name = node.node_id[:12] + ("…" if len(node.node_id) > 12 else "")
        marks = [m for m, on in (("this daemon", node.local), ("dead", not node.alive)) if on]
        table.add_row(
            name + (f"\n({', '.join(marks)})" if marks else ""),
            node.address + (f"\n{node.hostname}" if node.hostname else ""),
            _node_gpus(node),
            str(node.cpus),
            _held(node),
        )
    if nodes:
        console.print(table)
    if result.cluster_note:
        console.print(Text(result.cluster_note, style="yellow"))


def inspection(console: Console, name: str, result: t.DataInspection) -> None:
    """Prints data statistics, problems, warnings and samples."""
    summary = Table(title=f"{name}  ({result.format}, {result.source_format})", show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value")
    summary.add_row(
        "records",
        f"{result.records_total} total, {result.records_valid} valid, {result.records_invalid} invalid",
    )
    summary.add_row("with thinking", f"{result.with_thinking} of {result.records_valid}")
    summary.add_row("difficulty", ", ".join(f"{k}: {v}" for k, v in result.difficulty_counts.items()) or "—")
    summary.add_row("duplicates", str(result.duplicates))
    terms = ", ".join(f"{term} ({count})" for term, count in result.crypto_terms_top[:10])
    summary.add_row("top crypto terms", terms or "—")
    tl = result.token_lengths
    summary.add_row(
        f"tokens ({result.tokenizer})",
        f"min {tl.min} · p50 {tl.p50} · p90 {tl.p90} · p99 {tl.p99} · max {tl.max}",
    )
    for part in ("prompt", "reasoning", "answer"):
        if part in result.token_lengths_by_part:
            s = result.token_lengths_by_part[part]
            summary.add_row(f"  {part}", f"p50 {s.p50} · p90 {s.p90} · max {s.max}")
    over_style = "red" if result.over_max_seq_length else ""
    summary.add_row(
        "over max_seq_length",
        Text(f"{result.over_max_seq_length} (limit {result.max_seq_length})", style=over_style),
    )
    console.print(summary)
    _record_issues(console, "Problems", result.errors, "red")
    _record_issues(console, "Warnings", result.warnings, "yellow")
    # Without colour (piped, NO_COLOR) dim and green look alike: mark the parts with lines instead.
    plain = console.color_system is None or console.no_color
    for sample in result.samples:
        console.rule(f"record {sample.index} (line {sample.line}, {sample.tokens} tokens)")
        prompt_part = sample.rendered_text[: len(sample.rendered_text) - len(sample.trained_text) - 1]
        if not sample.rendered_text.endswith(sample.trained_text + "\n"):
            console.print(Text(sample.rendered_text))
        elif plain:
            console.print(Text(PROMPT_MARKER))
            console.print(Text(prompt_part), end="" if prompt_part.endswith("\n") else "\n")
            console.print(Text(TRAINED_MARKER))
            console.print(Text(sample.trained_text))
            console.print(Text(PLAIN_LEGEND))
        else:
            console.print(Text(prompt_part, style="dim"), end="")
            console.print(Text(sample.trained_text, style="green"))
            console.print(
                Text("dim = prompt (masked), green = trained (carries the loss)", style="italic dim")
            )


def _record_issues(console: Console, title: str, issues: list[t.RecordIssue], style: str) -> None:
    if not issues:
        return
    table = Table(title=title, title_style=f"bold {style}")
    table.add_column("line", justify="right", style="dim")
    table.add_column("record", justify="right", style="dim")
    table.add_column("field", style=style)
    table.add_column("problem")
    for issue in issues:
        table.add_row(
            str(issue.line) if issue.line else "—",
            str(issue.index) if issue.index >= 0 else "file",
            issue.field or "—",
            Text(issue.message),
        )
    console.print(table)


_STATE_STYLES = {
    t.JobState.SUCCEEDED: "green",
    t.JobState.FAILED: "red",
    t.JobState.CANCELLED: "yellow",
    t.JobState.RUNNING: "cyan",
}


def _state_text(state: t.JobState) -> Text:
    return Text(state.value, style=_STATE_STYLES.get(state, ""))


def jobs_table(jobs: list[t.Job]) -> Table:
    """The ``jobs`` / ``status`` table: one row per job."""
    table = Table(title="Jobs")
    for column in ("pipeline", "job", "state", "stage", "step", "loss", "output dir"):
        table.add_column(column)
    for job in jobs:
        p = job.progress
        table.add_row(
            job.pipeline_id,
            job.job_id,
            _state_text(job.state),
            job.stage or "—",
            f"{p.step}/{p.total_steps}" if p.total_steps else "—",
            f"{p.loss:.4f}" if p.loss is not None else "—",
            job.output_dir,
        )
    return table


def job_detail(console: Console, job: t.Job) -> None:
    """Prints one job: state, stages, progress, output dir and failure reason."""
    table = Table(title=f"{job.pipeline_id} ({job.job_id})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("state", _state_text(job.state))
    table.add_row("stage", job.stage or "—")
    table.add_row("stages", "  ".join(f"{s.name}:{s.state.value}" for s in job.stages))
    p = job.progress
    if p.total_steps:
        table.add_row(
            "progress",
            f"step {p.step}/{p.total_steps}, epoch {p.epoch:.2f}, loss "
            f"{p.loss if p.loss is not None else '—'}",
        )
    if job.waiting_for and job.state is t.JobState.QUEUED:
        table.add_row("waiting", Text(job.waiting_for, style="yellow"))
    table.add_row("output dir", job.output_dir)
    if job.resumed_from:
        table.add_row("resumed from", job.resumed_from)
    if job.failure_reason:
        table.add_row("reason", Text(job.failure_reason, style="red"))
    console.print(table)


def outcome(console: Console, job: t.Job) -> None:
    """Prints how a followed job ended: its plan (dry run), where its outputs are, or why it failed."""
    if job.state is t.JobState.SUCCEEDED and job.dry_run:
        plan(console, job)
    elif job.state is t.JobState.SUCCEEDED:
        console.print(Text.assemble(("✓ ", "bold green"), f"pipeline {job.pipeline_id} succeeded"))
        console.print(f"  adapter: {Path(job.output_dir) / 'adapter'}")
        console.print(f"  report:  {Path(job.output_dir) / 'report.md'}")
    else:
        console.print(
            Text.assemble(
                ("✗ ", "bold red"),
                f"pipeline {job.pipeline_id} {job.state.value}: ",
                job.failure_reason or "no reason recorded",
            )
        )
        console.print(Text(f"  logs: cryptotune logs {job.job_id}", style="dim"))


def plan(console: Console, job: t.Job) -> None:
    """Prints a dry run's plan as a table."""
    table = Table(title=f"Dry run of {job.pipeline_id}: nothing was trained", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    plan_ = job.plan or {}
    for key, value in plan_.items():
        if key != "strategies":
            table.add_row(key.replace("_", " "), _plan_value(value))
    console.print(table)
    rows = plan_.get("strategies")
    if isinstance(rows, list) and rows:
        strategies = Table(title=f"Parallel strategies (chosen: {plan_.get('strategy', '?')})")
        for column in ("strategy", "fits", "memory per GPU", "why"):
            strategies.add_column(column)
        for row in rows:
            if isinstance(row, dict):
                strategies.add_row(
                    str(row.get("strategy")),
                    "yes" if row.get("fits") else "no",
                    f"{float(row.get('memory_per_gpu_mb') or 0):,.0f} MB",
                    str(row.get("reason", "")),
                )
        console.print(strategies)


def _plan_value(value: object) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
