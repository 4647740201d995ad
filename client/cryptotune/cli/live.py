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

from cryptotune.types import EventType, JobEvent, JobState, StageState

STAGES = ("init", "data_prep", "config_gen", "env_setup", "training", "evaluation", "complete")
_MARKS = {
    StageState.PENDING: ("·", "dim"),
    StageState.RUNNING: ("▶", "bold cyan"),
    StageState.DONE: ("✓", "green"),
    StageState.FAILED: ("✗", "bold red"),
    StageState.CANCELLED: ("⊘", "yellow"),
    StageState.SKIPPED: ("↷", "dim"),
}
# A job that ends while a stage runs ends that stage the same way (the store records the same).
_ENDED_STAGE = {JobState.FAILED: StageState.FAILED, JobState.CANCELLED: StageState.CANCELLED}


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
    state: JobState = JobState.QUEUED
    stages: dict[str, StageState] = field(default_factory=lambda: dict.fromkeys(STAGES, StageState.PENDING))
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
        if kind == EventType.STATE:
            if "state" in data:
                self.state = JobState.parse(str(data["state"]))
            if data.get("reason") and self.state in (
                JobState.FAILED,
                JobState.CANCELLED,
                JobState.RECOVERING,
            ):
                self.failure = str(data["reason"])
            ended = _ENDED_STAGE.get(self.state)
            if ended is not None:
                # The stage that was running when the job ended (the store records the same).
                for name, status in self.stages.items():
                    if status is StageState.RUNNING:
                        self.stages[name] = ended
        elif kind == EventType.STAGE_STARTED:
            self.stages[str(data.get("stage"))] = StageState.RUNNING
        elif kind == EventType.STAGE_COMPLETED:
            self.stages[str(data.get("stage"))] = StageState.DONE
            self.stage_seconds[str(data.get("stage"))] = float(data.get("seconds") or 0.0)
        elif kind == EventType.STAGE_SKIPPED:
            self.stages[str(data.get("stage"))] = StageState.SKIPPED
        elif kind == EventType.PROGRESS:
            self.progress = dict(data)
        elif kind in (EventType.EVAL, EventType.GENERATION_EVAL):
            self.eval.update(data)
        elif kind == EventType.GPU_SAMPLE:
            self.gpus = list(data.get("gpus") or [])
        elif kind == EventType.PLAN:
            self.plan = dict(data)
        elif kind == EventType.RESULT:
            self.result = dict(data)
        elif kind == EventType.FAILED:
            self.failure = str(data.get("reason", ""))
            stage = data.get("stage")
            if stage:
                self.stages[str(stage)] = StageState.FAILED
        elif kind == EventType.CHECKPOINT:
            self.messages.append(("green", f"checkpoint saved at step {data.get('step')}"))
        elif kind == EventType.WARNING:
            self.messages.append(("yellow", f"warning: {data.get('message', '')}"))
        elif kind == EventType.LOG:
            self.messages.append(("dim", str(data.get("message", ""))))

    @property
    def terminal(self) -> bool:
        return self.state.is_terminal()


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
            mark, style = _MARKS.get(view.stages.get(name, StageState.PENDING), ("?", ""))
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
            Text.assemble((self._title, "bold"), "  ", (view.state.value, _state_style(view.state))),
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


_STATE_STYLES = {
    JobState.SUCCEEDED: "bold green",
    JobState.FAILED: "bold red",
    JobState.CANCELLED: "yellow",
    JobState.RUNNING: "cyan",
}


def _state_style(state: JobState) -> str:
    return _STATE_STYLES.get(state, "")


def _plain_line(event: JobEvent) -> str:
    d = event.data
    kind = event.type
    if kind == EventType.STATE:
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return f"[{event.seq}] state: {d.get('state')}{reason}"
    if kind in (EventType.STAGE_STARTED, EventType.STAGE_COMPLETED, EventType.STAGE_SKIPPED):
        verb = kind.removeprefix("stage_")
        extra = f" in {float(d.get('seconds') or 0):.1f}s" if kind == EventType.STAGE_COMPLETED else ""
        return f"[{event.seq}] stage {d.get('stage')} {verb}{extra}"
    if kind == EventType.PROGRESS:
        return f"[{event.seq}] step {d.get('step')}/{d.get('total_steps')}  {_metrics(d)}"
    if kind in (EventType.EVAL, EventType.GENERATION_EVAL):
        return f"[{event.seq}] {_eval_text(d)}"
    if kind == EventType.CHECKPOINT:
        return f"[{event.seq}] checkpoint at step {d.get('step')}: {d.get('path')}"
    if kind in (EventType.WARNING, EventType.LOG):
        return f"[{event.seq}] {kind}: {d.get('message')}"
    if kind == EventType.FAILED:
        return f"[{event.seq}] failed in {d.get('stage')}: {d.get('reason')}"
    if kind == EventType.RESULT:
        return f"[{event.seq}] report: {d.get('report_path')}"
    if kind == EventType.PLAN:
        return f"[{event.seq}] plan: {plan_summary(d)}"
    return ""
