"""The pipeline's report: ``report.json``, ``report.md`` and the ``loss_curve.png`` it embeds."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptotune_daemon.layout import LOSS_CURVE, REPORT_JSON, REPORT_MD

if TYPE_CHECKING:
    from cryptotune_daemon.training.checkpoints import Hashes
    from cryptotune_daemon.training.planner import Plan
    from cryptotune_daemon.training.trainer import TrainerState

REQUIRED_KEYS: tuple[str, ...] = (
    "pipeline_id",
    "model",
    "train_samples",
    "eval_samples",
    "steps",
    "train_loss_first",
    "train_loss_last",
    "eval_loss",
    "eval_loss_by_difficulty",
    "perplexity",
    "perplexity_by_difficulty",
    "thinking_format_rate",
    "crypto_term_recall",
    "tokens_per_second",
    "peak_memory_mb",
    "stage_seconds",
    "wall_seconds",
    "adapter_path",
    "resumed_from_step",
    "precision",
    "device",
    "world_size",
    "strategy",
    "mesh",
)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None (they are not JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def peak_memory_mb(device_kind: str) -> float:
    """Peak memory of this process: CUDA max allocated on a GPU, else the peak resident set size."""
    if device_kind == "cuda":
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def plot_loss_curve(path: Path, train: Sequence[Sequence[float]], evals: Sequence[Sequence[float]]) -> None:
    """Draws train loss per step and eval loss points to a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if train:
            axes.plot([p[0] for p in train], [p[1] for p in train], label="train loss", linewidth=1.2)
        if evals:
            axes.plot(
                [p[0] for p in evals], [p[1] for p in evals], "o--", label="eval loss", color="tab:orange"
            )
        axes.set_xlabel("step")
        axes.set_ylabel("loss (nats / token)")
        axes.set_title("cryptotune loss")
        axes.grid(alpha=0.3)
        if train or evals:
            axes.legend()
        figure.tight_layout()
        temp = path.with_name(f".{path.name}.{os.getpid()}.png")
        figure.savefig(temp)
        temp.replace(path)
    finally:
        plt.close(figure)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "–"
    return str(value)


def _oom_text(recoveries: list[Mapping[str, Any]]) -> str:
    if not recoveries:
        return "none"
    return "; ".join(
        f"step {r.get('step')}: micro-batch {r.get('old_micro_batch')} → {r.get('new_micro_batch')}"
        for r in recoveries
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    """A human-readable summary: one table of the key numbers, the loss curve, stage timings."""
    rows = [
        ("Pipeline", report.get("pipeline_id")),
        ("Model", report.get("model")),
        ("Device", f"{report.get('device')} × {report.get('world_size')} ({report.get('precision')})"),
        ("Strategy", f"{report.get('strategy', 'data_parallel')}, mesh {report.get('mesh') or {}}"),
        ("Train / eval samples", f"{report.get('train_samples')} / {report.get('eval_samples')}"),
        ("Steps", report.get("steps")),
        ("Resumed from step", report.get("resumed_from_step")),
        (
            "Train loss (first → last)",
            f"{_fmt(report.get('train_loss_first'))} → {_fmt(report.get('train_loss_last'))}",
        ),
        ("Eval loss", report.get("eval_loss")),
        ("Eval loss by difficulty", report.get("eval_loss_by_difficulty")),
        ("Perplexity", report.get("perplexity")),
        ("Perplexity by difficulty", report.get("perplexity_by_difficulty")),
        ("Thinking-format rate", report.get("thinking_format_rate")),
        ("Crypto-term recall", report.get("crypto_term_recall")),
        (
            "Generation checks",
            f"{report.get('generation_evaluated', 0)} samples, "
            f"{report.get('generation_tokens', 0)} tokens generated",
        ),
        ("Tokens / s (trained)", report.get("tokens_per_second")),
        ("Peak memory (MB)", report.get("peak_memory_mb")),
        (
            "Micro-batch × accumulation",
            f"{report.get('micro_batch_size')} × {report.get('gradient_accumulation_steps')}",
        ),
        ("Out-of-memory recoveries", _oom_text(report.get("oom_recoveries") or [])),
        ("Wall time (s)", report.get("wall_seconds")),
        ("Adapter", f"`{report.get('adapter_path')}`"),
    ]
    lines = ["# cryptotune report", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    lines += ["", f"![loss]({LOSS_CURVE})", "", "## Stages", "", "| stage | seconds |", "|---|---|"]
    stage_seconds = report.get("stage_seconds") or {}
    lines += [f"| {stage} | {_fmt(seconds)} |" for stage, seconds in stage_seconds.items()]
    samples = report.get("generation_samples") or []
    if samples:
        lines += ["", "## Generation samples", ""]
        for sample in samples:
            text = str(sample.get("generated", "")).replace("```", "ʼʼʼ")
            lines += [
                f"- record {sample.get('index')} (difficulty {sample.get('difficulty')}): "
                f"thinking well formed: {sample.get('thinking_ok')}, "
                f"term recall: {_fmt(sample.get('recall'))}",
                "",
                "```text",
                text,
                "```",
                "",
            ]
    return "\n".join(lines) + "\n"


def build_report(
    *,
    pipeline_id: str,
    job_id: str,
    model: str,
    train_samples: int,
    eval_samples: int,
    trainer_state: TrainerState,
    metrics: Mapping[str, Any],
    tokens_per_second: float | None,
    peak_memory_mb: float,
    stage_seconds: Mapping[str, float],
    wall_seconds: float,
    adapter_path: Path,
    resumed_from_step: int | None,
    plan: Plan,
    device: str,
    world_size: int,
    mesh: Mapping[str, int],
    oom_recoveries: list[Any],
    hashes: Hashes,
) -> dict[str, Any]:
    """The ``report.json`` object of a completed run (``REQUIRED_KEYS`` and more)."""
    losses = [float(p[1]) for p in trainer_state.loss_history]
    return {
        "pipeline_id": pipeline_id,
        "job_id": job_id,
        "model": model,
        "train_samples": train_samples,
        "eval_samples": eval_samples,
        "steps": trainer_state.step,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "eval_loss": metrics.get("eval_loss"),
        "eval_loss_by_difficulty": metrics.get("eval_loss_by_difficulty") or {},
        "perplexity": metrics.get("perplexity"),
        "perplexity_by_difficulty": metrics.get("perplexity_by_difficulty") or {},
        "thinking_format_rate": metrics.get("thinking_format_rate"),
        "crypto_term_recall": metrics.get("crypto_term_recall"),
        "generation_evaluated": metrics.get("generation_evaluated", 0),
        "generation_tokens": metrics.get("generation_tokens", 0),
        "tokens_per_second": tokens_per_second,
        "trained_tokens": trainer_state.trained_tokens,
        "peak_memory_mb": peak_memory_mb,
        "stage_seconds": dict(stage_seconds),
        "wall_seconds": wall_seconds,
        "adapter_path": str(adapter_path),
        "resumed_from_step": resumed_from_step,
        "precision": plan.precision,
        "device": device,
        "world_size": world_size,
        "strategy": trainer_state.strategy,
        "mesh": dict(mesh),
        "micro_batch_size": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "effective_batch_size": plan.effective_batch_size,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "oom_recoveries": oom_recoveries,
        "data_hash": hashes.data,
        "config_hash": hashes.config,
        "tokenizer_hash": hashes.tokenizer,
        "generation_samples": metrics.get("generation_samples") or [],
    }


def write_report(
    output_dir: Path,
    report: Mapping[str, Any],
    loss_history: Sequence[Sequence[float]],
    eval_history: Sequence[Sequence[float]],
) -> Path:
    """Writes ``report.json``, ``report.md`` and ``loss_curve.png``; returns the JSON's path."""
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ValueError(f"report lacks {', '.join(missing)}")
    plot_loss_curve(output_dir / LOSS_CURVE, loss_history, eval_history)
    (output_dir / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    path = output_dir / REPORT_JSON
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(
        json.dumps(json_safe(dict(report)), indent=2, ensure_ascii=False, default=str), encoding="utf-8"
    )
    temp.replace(path)
    return path
