"""Job domain types: states and their allowed moves, stages, progress, jobs and events."""

from __future__ import annotations

import enum
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.worker.state import STAGES


class JobState(enum.Enum):
    """Lifecycle state of a job. The value is what the store persists."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    RECOVERING = "recovering"

    @property
    def is_terminal(self) -> bool:
        """Whether the state can never change again."""
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# Terminal states have no entry: nothing may leave them.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLING, JobState.RECOVERING}
    ),
    # A worker may finish (or fail) before the cancel signal reaches it; the outcome is recorded as is.
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.FAILED, JobState.SUCCEEDED}),
    JobState.RECOVERING: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.CANCELLING, JobState.CANCELLED}
    ),
}


def sources_of(to: JobState) -> frozenset[JobState]:
    """Return every state from which ``to`` may be entered."""
    return frozenset(s for s, targets in TRANSITIONS.items() if to in targets)


STAGE_STATES: frozenset[str] = frozenset({"pending", "running", "done", "failed", "cancelled", "skipped"})

PIPELINE_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def validate_pipeline_id(pipeline_id: str) -> str:
    """Check a user-chosen pipeline id.

    Pipeline ids name directories and appear in URLs and shell commands, so they are
    restricted to a portable character set.

    Args:
        pipeline_id: the candidate id.

    Returns:
        The id, unchanged.

    Raises:
        CryptotuneError: REQUEST_INVALID when the id does not match ``[A-Za-z0-9._-]{1,64}``
            or is ``.`` or ``..``.
    """
    if not PIPELINE_ID_PATTERN.fullmatch(pipeline_id) or pipeline_id in {".", ".."}:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"invalid pipeline id {pipeline_id!r}: use 1 to 64 characters from A-Z a-z 0-9 . _ - "
            "(pattern [A-Za-z0-9._-]{1,64}), and not '.' or '..'",
        )
    return pipeline_id


def _timestamped_id(prefix: str, random_hex_chars: int) -> str:
    # UTC keeps ids sortable by creation time regardless of the daemon's time zone.
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{prefix}-{stamp}-{secrets.token_hex(random_hex_chars // 2)}"


def generate_pipeline_id() -> str:
    """Return a new pipeline id such as ``pl-20261127-193000-ab12cd``.

    Ids sort by creation time (UTC, one-second resolution); the random suffix makes
    collisions unlikely, and the store refuses duplicates anyway.
    """
    return _timestamped_id("pl", 6)


def generate_job_id() -> str:
    """Return a new job id such as ``job-20261127-193000-ab12cd34``."""
    return _timestamped_id("job", 8)


@dataclass(frozen=True)
class StageStatus:
    """Summary of one pipeline stage.

    Attributes:
        name: one of ``STAGES``.
        state: pending, running, done, failed, cancelled or skipped.
        seconds: wall time the stage took (0.0 until it completes).
    """

    name: str
    state: str = "pending"
    seconds: float = 0.0


def initial_stages() -> tuple[StageStatus, ...]:
    """Return the stage summary of a job that has not started: every stage pending."""
    return tuple(StageStatus(name) for name in STAGES)


@dataclass(frozen=True)
class Progress:
    """Latest training progress reported by the worker.

    Attributes:
        step: optimizer steps done.
        total_steps: optimizer steps planned (0 when unknown).
        epoch: fractional epoch.
        loss: latest training loss (may be NaN when training diverged).
        learning_rate: current learning rate.
        tokens_per_second: recent throughput.
        eta_seconds: estimated seconds to the end of training.
        grad_norm: latest gradient norm.
    """

    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float = 0.0
    learning_rate: float = 0.0
    tokens_per_second: float = 0.0
    eta_seconds: float = 0.0
    grad_norm: float = 0.0

    def merged(self, update: dict[str, Any]) -> Progress:
        """Return a copy with the known numeric fields of ``update`` applied.

        Unknown keys and values that are not numbers are ignored, so a worker that
        reports extra metrics cannot corrupt the summary.
        """
        values: dict[str, Any] = {}
        for name in _PROGRESS_INT_FIELDS:
            raw = update.get(name)
            # bool is an int subclass but never a meaningful step count.
            if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
                values[name] = int(raw)
        for name in _PROGRESS_FLOAT_FIELDS:
            raw = update.get(name)
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                values[name] = float(raw)
        if not values:
            return self
        return Progress(**{**self.to_dict(), **values})

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict."""
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "loss": self.loss,
            "learning_rate": self.learning_rate,
            "tokens_per_second": self.tokens_per_second,
            "eta_seconds": self.eta_seconds,
            "grad_norm": self.grad_norm,
        }


_PROGRESS_INT_FIELDS = ("step", "total_steps")
_PROGRESS_FLOAT_FIELDS = ("epoch", "loss", "learning_rate", "tokens_per_second", "eta_seconds", "grad_norm")


@dataclass(frozen=True)
class Job:
    """A training job as the store records it.

    Attributes:
        job_id: unique id of this job (one attempt of a pipeline).
        pipeline_id: user-facing pipeline id; shared by a pipeline's resumed jobs.
        request_id: the client's idempotency key.
        state: lifecycle state.
        stage: name of the stage running or last started ("" before the first).
        stages: status of every stage, in pipeline order.
        progress: latest training progress.
        output_dir: absolute output directory on the daemon's machine.
        failure_reason: why the job failed or was cancelled ("" otherwise).
        created_at: creation time (Unix seconds).
        updated_at: time of the last change (Unix seconds).
        dry_run: whether the job only plans and does not train.
        resumed_from: what the job resumes (``PIPELINE_ID`` or ``PIPELINE_ID@STEP``), "" when new.
        plan: the plan reported by the worker, when any.
        device: "cpu", the comma-joined GPU uuids, or "" before scheduling.
        spec: opaque JSON the daemon needs to (re)start the job.
        worker_pid: process id of the worker's process group leader, when one runs.
        worker_started_at: when that worker started (Unix seconds); guards against pid reuse.
        events_offset: bytes of the worker's event file already ingested.
        retries: how many times the job was restarted after losing its worker.
        gpu_uuids: the GPUs allotted to the job (empty on CPU or before scheduling).
        waiting_for: what the job, while QUEUED, waits for (a Ray job's "waiting for 2 nodes × 4 GPUs;
            the cluster has 1 node free"); "" otherwise.
    """

    job_id: str
    pipeline_id: str
    request_id: str
    state: JobState
    stage: str = ""
    stages: tuple[StageStatus, ...] = field(default_factory=initial_stages)
    progress: Progress = field(default_factory=Progress)
    output_dir: str = ""
    failure_reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    dry_run: bool = False
    resumed_from: str = ""
    plan: dict[str, Any] | None = None
    device: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    worker_pid: int | None = None
    worker_started_at: float | None = None
    events_offset: int = 0
    retries: int = 0
    gpu_uuids: tuple[str, ...] = ()
    waiting_for: str = ""

    @property
    def is_terminal(self) -> bool:
        """Whether the job has reached a state that never changes."""
        return self.state.is_terminal

    def stage_status(self, name: str) -> StageStatus | None:
        """Return the status of the named stage, or None for an unknown name."""
        for status in self.stages:
            if status.name == name:
                return status
        return None


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log.

    Attributes:
        job_id: the job the event belongs to.
        seq: per-job sequence number, starting at 1 with no gaps.
        type: event type, e.g. ``state``, ``stage_started``, ``progress``, ``log``.
        ts: when the event happened (Unix seconds).
        data: the event's JSON payload.
    """

    job_id: str
    seq: int
    type: str
    ts: float
    data: dict[str, Any] = field(default_factory=dict)
