"""The stage runner: init → data_prep → config_gen → env_setup → training → evaluation → complete.

Each stage lives in ``worker/stages/``; this module runs them in order, records each one's
completion and turns the outcome into the worker's exit code.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.layout import ADAPTER_DIR, REPORT_JSON, RESOLVED_CONFIG
from cryptotune_daemon.worker.events import EventWriter
from cryptotune_daemon.worker.failures import describe_failure
from cryptotune_daemon.worker.log_setup import close_system_logging
from cryptotune_daemon.worker.spec import JobSpec
from cryptotune_daemon.worker.stages.base import WorkerContext
from cryptotune_daemon.worker.stages.complete import CompleteStage
from cryptotune_daemon.worker.stages.config_gen import ConfigGenStage
from cryptotune_daemon.worker.stages.data_prep import DataPrepStage
from cryptotune_daemon.worker.stages.env_setup import EnvSetupStage
from cryptotune_daemon.worker.stages.evaluation import EvaluationStage
from cryptotune_daemon.worker.stages.init import InitStage
from cryptotune_daemon.worker.stages.training import TrainingStage
from cryptotune_daemon.worker.state import PipelineState, read_state

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_CANCELLED = 128 + signal.SIGTERM


class JobCancelled(BaseException):
    """Raised from the SIGTERM handler; a BaseException so ``except Exception`` cannot swallow it."""


def _raise_cancelled(signum: int, _frame: FrameType | None) -> None:
    # A second signal must not interrupt the short cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise JobCancelled(signal.Signals(signum).name)


def _world_from_env(default: int = 1) -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", str(default)))


class Pipeline(
    InitStage, DataPrepStage, ConfigGenStage, EnvSetupStage, TrainingStage, EvaluationStage, CompleteStage
):
    """Runs one job's stages in this process.

    Each stage's completion (and what later stages need from it) is recorded in
    ``pipeline_state.json``; a resumed job restores completed stages (``stage_skipped``) and runs
    from the first incomplete one. ``env_setup`` prepares this process, so it always runs.
    Only rank 0 writes files and events; every rank runs every stage.

    Args:
        spec: the job spec.
        events: the event writer (a disabled one is created for ranks other than 0).
        world_size: ranks in the job (defaults to ``WORLD_SIZE`` from torchrun, else 1).
    """

    def __init__(
        self, spec: JobSpec, *, events: EventWriter | None = None, world_size: int | None = None
    ) -> None:
        self.spec = spec
        self.rank, env_world = _world_from_env()
        self.world_size = world_size or env_world
        self.is_main = self.rank == 0
        self.events = events or EventWriter(spec.events_path, enabled=self.is_main)
        self.ctx = WorkerContext()
        self.output_dir = spec.output_dir
        self._started = time.monotonic()
        self._current = ""
        self._gpu_sampler: Any = None
        self._reporting = None
        self._succeeded = False
        self._complete_started = time.monotonic()
        previous = read_state(self.output_dir) if spec.resume is not None else None
        if previous is not None and previous.pipeline_id and previous.pipeline_id != spec.pipeline_id:
            raise CryptotuneError(
                ErrorCode.RESUME_REFUSED,
                f"{self.output_dir} holds pipeline {previous.pipeline_id}, not {spec.pipeline_id}",
            )
        self.state = previous or PipelineState(pipeline_id=spec.pipeline_id)
        self.state.pipeline_id = spec.pipeline_id
        if spec.resume is not None and spec.resume.step is not None:
            # Resuming a chosen checkpoint re-runs training from it, and everything after.
            self.state.invalidate_from("training")

    def _stages(self) -> list[tuple[str, Callable[[], None], Callable[[], bool] | None]]:
        """Each stage with its restore: True when an earlier run's result was restored, False when
        the stage must run again; None for stages that always run (they set up this process or
        produce the final outputs)."""
        return [
            ("init", self._init, self._restore_init),
            ("data_prep", self._data_prep, self._restore_data_prep),
            ("config_gen", self._config_gen, self._restore_config_gen),
            ("env_setup", self._env_setup, None),
            ("training", self._training, self._restore_training),
            ("evaluation", self._evaluation, self._restore_evaluation),
            ("complete", self._complete, None),
        ]

    def run(self) -> int:
        """Runs the stages; returns the process exit code (0 success, 1 failure, 143 cancelled)."""
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            runs = self.state.results.setdefault("runs", [])
            runs.append(
                {
                    "job_id": self.spec.job_id,
                    "started_at": time.time(),
                    "resume": None
                    if self.spec.resume is None
                    else {"step": self.spec.resume.step, "output_dir": str(self.spec.resume.output_dir)},
                }
            )
            self._save_state()
        try:
            for name, run, restore in self._stages():
                self._current = name
                if restore is not None and self.state.completed(name) and restore():
                    self.events.emit(
                        "stage_skipped", {"stage": name, "reason": "completed in an earlier run"}
                    )
                    continue
                self.events.emit("stage_started", {"stage": name})
                self.state.mark(name, "running")
                self._save_state()
                began = time.monotonic()
                run()
                seconds = time.monotonic() - began
                self.state.mark(name, "completed", seconds=seconds)
                self._save_state()
                self.events.emit("stage_completed", {"stage": name, "seconds": round(seconds, 3)})
                if name == "config_gen" and self.spec.dry_run:
                    # The plan event is a dry run's result; `result` marks the clean end.
                    self.events.emit(
                        "result",
                        {
                            "report_path": None,
                            "adapter_path": None,
                            "dry_run": True,
                            "resolved_config_path": str(self.output_dir / RESOLVED_CONFIG),
                        },
                    )
                    self._succeeded = True
                    return 0
            self.events.emit(
                "result",
                {
                    "report_path": str(self.output_dir / REPORT_JSON),
                    "adapter_path": str(self.output_dir / ADAPTER_DIR),
                },
            )
            self._succeeded = True
            return 0
        except JobCancelled:
            log.warning("cancelled during %s", self._current)
            self._mark_current("cancelled", "cancelled")
            return EXIT_CANCELLED
        except BaseException as error:
            traceback.print_exc(file=sys.stderr)
            reason = describe_failure(error, self._current)
            self._mark_current("failed", reason)
            self.events.emit("failed", {"reason": reason, "stage": self._current})
            return EXIT_FAILED
        finally:
            self._shutdown()

    def _mark_current(self, status: str, reason: str) -> None:
        if not self._current:
            return
        try:
            self.state.mark(self._current, status, error=reason)
            self._save_state()
        except OSError:
            log.exception("could not record the %s stage as %s", self._current, status)

    def _shutdown(self) -> None:
        if self._gpu_sampler is not None:
            self._gpu_sampler.stop()
        if self._reporting is not None:
            self._reporting.close()
        if self._succeeded:
            from cryptotune_daemon.training.distributed import shutdown_distributed

            # Only after success: with a failed or cancelled peer, tearing the group down can
            # block, and process exit releases it anyway.
            shutdown_distributed()
        self.events.close()
        close_system_logging()


def _events_path_of(spec_path: Path) -> Path | None:
    """The spec's ``events_path``, read leniently from a spec that failed validation."""
    import json

    try:
        raw = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = raw.get("events_path") if isinstance(raw, dict) else None
    return Path(value) if isinstance(value, str) and value else None


def main(spec_path: Path, *, warm: bool = False) -> int:
    """Runs a job from its spec file; returns the exit code.

    Args:
        spec_path: the job spec.
        warm: the process is a warm worker the job was handed to (said in the job's events).
    """
    from cryptotune_daemon.worker.spec import load_spec

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _raise_cancelled)
    signal.signal(signal.SIGINT, _raise_cancelled)
    try:
        spec = load_spec(spec_path)
        pipeline = Pipeline(spec)
    except JobCancelled:
        return EXIT_CANCELLED
    except CryptotuneError as error:
        # No pipeline yet: still report through the events file if the spec names one.
        print(f"cryptotune worker: {error.message}", file=sys.stderr)
        events_path = _events_path_of(spec_path)
        if events_path is not None and _world_from_env()[0] == 0:
            writer = EventWriter(events_path)
            writer.emit("failed", {"reason": error.message, "stage": "init"})
            writer.close()
        return EXIT_FAILED
    if warm:
        pipeline._log(f"the job runs in a warm worker (pid {os.getpid()}; torch, transformers, peft loaded)")
    return pipeline.run()
