"""The live job display: stage checklist, step progress with loss/lr/tokens per s/ETA, GPU use."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cryptotune.types import JobEvent

STAGES = ("init", "data_prep", "config_gen", "env_setup", "training", "evaluation", "complete")
_MARKS = {
    "pending": ("·", "dim"),
    "running": ("▶", "bold cyan"),
    "done": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "cancelled": ("⊘", "yellow"),
    "skipped": ("↷", "dim"),
}


def _fmt_seconds(value: float | None) -> str:
    if value is None or value < 0:
        return "?"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


@dataclass
class JobView:
    """What the display knows about a job, folded from its events."""

    job_id: str
    state: str = "queued"
    stages: dict[str, str] = field(default_factory=lambda: dict.fromkeys(STAGES, "pending"))
    stage_seconds: dict[str, float] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    failure: str = ""
    messages: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=6))
    last_seq: int = 0

    def apply(self, event: JobEvent) -> None:
        """Folds one event into the view."""
        self.last_seq = event.seq
        data = event.data
        kind = event.type
        if kind == "state":
            self.state = str(data.get("state", self.state))
            if data.get("reason") and self.state in ("failed", "cancelled", "recovering"):
                self.failure = str(data["reason"])
            if self.state in ("failed", "cancelled"):
                # The stage that was running when the job ended (the store records the same).
                for name, status in self.stages.items():
                    if status == "running":
                        self.stages[name] = self.state
        elif kind == "stage_started":
            self.stages[str(data.get("stage"))] = "running"
        elif kind == "stage_completed":
            self.stages[str(data.get("stage"))] = "done"
            self.stage_seconds[str(data.get("stage"))] = float(data.get("seconds") or 0.0)
        elif kind == "stage_skipped":
            self.stages[str(data.get("stage"))] = "skipped"
        elif kind == "progress":
            self.progress = dict(data)
        elif kind in ("eval", "generation_eval"):
            self.eval.update(data)
        elif kind == "gpu_sample":
            self.gpus = list(data.get("gpus") or [])
        elif kind == "plan":
            self.plan = dict(data)
        elif kind == "result":
            self.result = dict(data)
        elif kind == "failed":
            self.failure = str(data.get("reason", ""))
            stage = data.get("stage")
            if stage:
                self.stages[str(stage)] = "failed"
        elif kind == "checkpoint":
            self.messages.append(("green", f"checkpoint saved at step {data.get('step')}"))
        elif kind == "warning":
            self.messages.append(("yellow", f"warning: {data.get('message', '')}"))
        elif kind == "log":
            self.messages.append(("dim", str(data.get("message", ""))))

    @property
    def terminal(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


class LiveDisplay:
    """Renders a JobView with rich.Live on a terminal, or one line per notable event otherwise."""

    def __init__(self, console: Console, title: str) -> None:
        self._console = console
        self._title = title
        self._bar = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            console=console,
            expand=False,
        )
        self._task = self._bar.add_task("steps", total=None, metrics="")
        self._interactive = console.is_terminal
        self._live: Live | None = None

    def _stage_table(self, view: JobView) -> Table:
        table = Table.grid(padding=(0, 1))
        table.add_column()
        table.add_column()
        table.add_column(style="dim")
        for name in STAGES:
            mark, style = _MARKS.get(view.stages.get(name, "pending"), ("?", ""))
            seconds = view.stage_seconds.get(name)
            table.add_row(
                Text(mark, style=style), Text(name, style=style), f"{seconds:.1f}s" if seconds else ""
            )
        return table

    def _render(self, view: JobView) -> RenderableType:
        p = view.progress
        total = int(p.get("total_steps") or 0)
        self._bar.update(
            self._task,
            completed=int(p.get("step") or 0),
            total=total or None,
            metrics=_metrics(p),
        )
        parts: list[RenderableType] = [
            Text.assemble((self._title, "bold"), "  ", (view.state, _state_style(view.state))),
            self._stage_table(view),
        ]
        if p:
            parts.append(self._bar)
        if view.gpus:
            parts.append(Text("  ".join(_gpu_text(g) for g in view.gpus), style="magenta"))
        if view.eval:
            parts.append(Text(_eval_text(view.eval), style="cyan"))
        parts.extend(Text(message, style=style) for style, message in view.messages)
        return Group(*parts)

    def follow(self, view: JobView, events: Iterable[JobEvent], on_event: Any = None) -> JobView:
        """Consumes events until they end (the job is terminal); returns the final view."""
        if not self._interactive:
            for event in events:
                view.apply(event)
                line = _plain_line(event)
                if line:
                    self._console.print(line, highlight=False, soft_wrap=True)
            return view
        with Live(self._render(view), console=self._console, refresh_per_second=4, transient=False) as live:
            self._live = live
            last = 0.0
            for event in events:
                view.apply(event)
                now = time.monotonic()
                if now - last > 0.1 or view.terminal:
                    live.update(self._render(view))
                    last = now
            live.update(self._render(view))
        return view


def plan_summary(plan: dict[str, Any]) -> str:
    """One line for a ``plan`` event: steps, batch split, precision, memory estimate."""

    def on_off(key: str) -> str:
        return "on" if plan.get(key) else "off"

    text = (
        f"{plan.get('steps')} steps over {plan.get('train_samples')} samples; micro-batch "
        f"{plan.get('micro_batch_size')} × accumulation {plan.get('gradient_accumulation_steps')} × "
        f"{plan.get('world_size')} process(es) = {plan.get('effective_batch_size')}; "
        f"{plan.get('precision')} on {plan.get('device')}; gradient checkpointing "
        f"{on_off('gradient_checkpointing')}"
    )
    if plan.get("memory_estimate_mb") is not None:
        text += f"; estimated peak {float(plan['memory_estimate_mb']):,.0f} MB"
        if plan.get("memory_budget_mb"):
            text += f" of {float(plan['memory_budget_mb']):,.0f} MB"
    return text


def _metrics(p: dict[str, Any]) -> str:
    bits = []
    if p.get("loss") is not None:
        bits.append(f"loss {float(p['loss']):.4f}")
    if p.get("learning_rate") is not None:
        bits.append(f"lr {float(p['learning_rate']):.2e}")
    if p.get("tokens_per_second"):
        bits.append(f"{float(p['tokens_per_second']):,.0f} tok/s")
    if p.get("epoch") is not None:
        bits.append(f"epoch {float(p['epoch']):.2f}")
    if p.get("eta_seconds") is not None:
        bits.append(f"ETA {_fmt_seconds(float(p['eta_seconds']))}")
    return " · ".join(bits)


def _gpu_text(g: dict[str, Any]) -> str:
    return (
        f"GPU{g.get('index')}: {g.get('utilization_percent', '?')}% · "
        f"{g.get('memory_used_mb', '?')}/{g.get('memory_total_mb', '?')} MiB"
    )


def _eval_text(e: dict[str, Any]) -> str:
    bits = []
    if e.get("eval_loss") is not None:
        bits.append(f"eval loss {float(e['eval_loss']):.4f}")
    if e.get("perplexity") is not None:
        bits.append(f"ppl {float(e['perplexity']):.1f}")
    if e.get("thinking_format_rate") is not None:
        bits.append(f"thinking format {float(e['thinking_format_rate']):.0%}")
    if e.get("crypto_term_recall") is not None:
        bits.append(f"term recall {float(e['crypto_term_recall']):.0%}")
    return "eval: " + " · ".join(bits) if bits else ""


def _state_style(state: str) -> str:
    return {"succeeded": "bold green", "failed": "bold red", "cancelled": "yellow", "running": "cyan"}.get(
        state, ""
    )


def _plain_line(event: JobEvent) -> str:
    d = event.data
    kind = event.type
    if kind == "state":
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return f"[{event.seq}] state: {d.get('state')}{reason}"
    if kind in ("stage_started", "stage_completed", "stage_skipped"):
        verb = kind.removeprefix("stage_")
        extra = f" in {float(d.get('seconds') or 0):.1f}s" if kind == "stage_completed" else ""
        return f"[{event.seq}] stage {d.get('stage')} {verb}{extra}"
    if kind == "progress":
        return f"[{event.seq}] step {d.get('step')}/{d.get('total_steps')}  {_metrics(d)}"
    if kind in ("eval", "generation_eval"):
        return f"[{event.seq}] {_eval_text(d)}"
    if kind == "checkpoint":
        return f"[{event.seq}] checkpoint at step {d.get('step')}: {d.get('path')}"
    if kind in ("warning", "log"):
        return f"[{event.seq}] {kind}: {d.get('message')}"
    if kind == "failed":
        return f"[{event.seq}] failed in {d.get('stage')}: {d.get('reason')}"
    if kind == "result":
        return f"[{event.seq}] report: {d.get('report_path')}"
    if kind == "plan":
        return f"[{event.seq}] plan: {plan_summary(d)}"
    return ""
