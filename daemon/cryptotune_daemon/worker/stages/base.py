"""What every stage shares: the job, the pipeline's state file, the event writer and the context."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptotune_daemon.layout import RESOLVED_CONFIG
from cryptotune_daemon.training.checkpoints import (
    Hashes,
)
from cryptotune_daemon.worker.config_mapping import resolved_config
from cryptotune_daemon.worker.events import EventWriter
from cryptotune_daemon.worker.spec import JobSpec
from cryptotune_daemon.worker.state import PipelineState, write_state

if TYPE_CHECKING:
    from cryptotune_daemon.config import CryptotuneConfig
    from cryptotune_daemon.training.dataset import PreparedData
    from cryptotune_daemon.training.distributed import DistContext
    from cryptotune_daemon.training.models import ModelSource
    from cryptotune_daemon.training.planner import Plan
    from cryptotune_daemon.training.reporting import MetricsReporting
    from cryptotune_daemon.training.trainer import TrainerState


# The stages log under the stage runner's name, as they did when they were one module: the lines of
# `cryptotune logs` keep the logger name users know.
PIPELINE_LOGGER = "cryptotune_daemon.worker.pipeline"
log = logging.getLogger(PIPELINE_LOGGER)


class WorkerContext:
    """What stages hand to later stages within one process; each field is set by the stage that
    produces it (or restores it on resume) before any later stage reads it."""

    config: CryptotuneConfig
    source: ModelSource
    tokenizer: Any
    hashes: Hashes
    data: PreparedData
    plan: Plan
    dist: DistContext
    model: Any
    trainer_state: TrainerState
    resumed_from_step: int | None = None
    tokens_per_second: float | None = None


class StageBase:
    """The state the stages share (set up by :class:`~cryptotune_daemon.worker.pipeline.Pipeline`)."""

    spec: JobSpec
    rank: int
    world_size: int
    is_main: bool
    events: EventWriter
    ctx: WorkerContext
    output_dir: Path
    state: PipelineState
    _started: float
    _current: str
    _gpu_sampler: Any
    _reporting: MetricsReporting | None
    _succeeded: bool
    _complete_started: float

    def _save_state(self) -> None:
        if self.is_main:
            write_state(self.output_dir, self.state)

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.events.warning(message)

    def _log(self, message: str) -> None:
        log.info("%s", message)
        self.events.log(message)

    def _write_resolved_config(self) -> None:
        import yaml

        if self.is_main:
            resolved = resolved_config(self.state.results["config_fingerprint"], self.ctx.plan)
            (self.output_dir / RESOLVED_CONFIG).write_text(
                yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8"
            )
