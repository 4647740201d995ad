"""Training metrics for TensorBoard, Weights & Biases and MLflow (``training.report_to``), fed from
the job's own events on rank 0, so every tool shows exactly what ``cryptotune watch`` shows."""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptotune_daemon.config.report_targets import check_report_to
from cryptotune_daemon.layout import TENSORBOARD_DIR

log = logging.getLogger(__name__)

TENSORBOARD_FLUSH_S = 5


def scalars_of(event_type: str, data: Mapping[str, Any]) -> dict[str, float]:
    """The scalars (tag → value) one job event carries; empty for events without metrics."""
    values: dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            values[tag] = float(value)

    if event_type == "progress":
        for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch"):
            put(f"train/{key}", data.get(key))
    elif event_type == "eval":
        put("eval/loss", data.get("eval_loss"))
        put("eval/perplexity", data.get("perplexity"))
        for difficulty, loss in dict(data.get("eval_loss_by_difficulty") or {}).items():
            put(f"eval/loss_by_difficulty/{difficulty}", loss)
    elif event_type == "generation_eval":
        put("eval/thinking_format_rate", data.get("thinking_format_rate"))
        put("eval/crypto_term_recall", data.get("crypto_term_recall"))
    elif event_type == "gpu_sample":
        for gpu in data.get("gpus") or []:
            if isinstance(gpu, Mapping):
                index = gpu.get("index")
                put(f"gpu/{index}/memory_used_mb", gpu.get("memory_used_mb"))
                if (gpu.get("utilization_percent") or 0) >= 0:
                    put(f"gpu/{index}/utilization_percent", gpu.get("utilization_percent"))
    return values


class Reporter(Protocol):
    """One place metrics go."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Records ``values`` at optimiser step ``step``."""
        ...

    def close(self) -> None:
        """Flushes and releases the target."""
        ...


class TensorBoardReporter:
    """Event files under ``OUTPUT_DIR/tensorboard/`` (``tensorboard --logdir OUTPUT_DIR/tensorboard``)."""

    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = output_dir / TENSORBOARD_DIR
        self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=TENSORBOARD_FLUSH_S)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbReporter:
    """A Weights & Biases run named after the pipeline (project: ``$WANDB_PROJECT`` or cryptotune)."""

    def __init__(self, output_dir: Path, run_name: str, config: Mapping[str, Any]) -> None:
        wandb: Any = importlib.import_module("wandb")
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cryptotune"),
            name=run_name,
            dir=str(output_dir),
            config=dict(config),
        )

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self._run.log(dict(values), step=step)

    def close(self) -> None:
        self._run.finish()


class MlflowReporter:
    """An MLflow run named after the pipeline (experiment: ``$MLFLOW_EXPERIMENT_NAME`` or cryptotune;
    tracking server: ``$MLFLOW_TRACKING_URI``)."""

    def __init__(self, run_name: str) -> None:
        self._mlflow: Any = importlib.import_module("mlflow")
        self._mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "cryptotune"))
        self._mlflow.start_run(run_name=run_name)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self._mlflow.log_metrics(dict(values), step=step)

    def close(self) -> None:
        self._mlflow.end_run()


class MetricsReporting:
    """Turns job events into scalars for every configured reporter (thread-safe: the GPU sampler
    thread emits too). A failing reporter is logged and dropped; it never stops training."""

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self._reporters = list(reporters)
        self._lock = threading.Lock()
        self._step = 0

    def on_event(self, event_type: str, data: Mapping[str, Any]) -> None:
        """Records the event's scalars at its step (or, for GPU samples, the latest step seen)."""
        values = scalars_of(event_type, data)
        with self._lock:
            step = data.get("step")
            if isinstance(step, int) and not isinstance(step, bool):
                self._step = step
            if not values:
                return
            for reporter in list(self._reporters):
                try:
                    reporter.scalars(values, self._step)
                except Exception:
                    log.exception("metrics reporter %s failed: it is turned off", type(reporter).__name__)
                    self._reporters.remove(reporter)

    def close(self) -> None:
        """Closes every reporter."""
        with self._lock:
            for reporter in self._reporters:
                try:
                    reporter.close()
                except Exception:
                    log.exception("could not close metrics reporter %s", type(reporter).__name__)
            self._reporters.clear()


def open_reporting(
    report_to: Sequence[str], output_dir: Path, run_name: str, config: Mapping[str, Any]
) -> MetricsReporting:
    """The reporters ``report_to`` names (checked by :func:`check_report_to` first)."""
    check_report_to(report_to)
    reporters: list[Reporter] = []
    for target in dict.fromkeys(report_to):
        if target == "tensorboard":
            reporters.append(TensorBoardReporter(output_dir))
        elif target == "wandb":
            reporters.append(WandbReporter(output_dir, run_name, config))
        elif target == "mlflow":
            reporters.append(MlflowReporter(run_name))
    return MetricsReporting(reporters)
