"""Typed results returned by the SDK (plain dataclasses, JSON-friendly via ``to_dict``)."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class JobState(enum.StrEnum):
    """A job's lifecycle state; the value is the lower-case name the CLI prints (and equals as a str)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    RECOVERING = "recovering"
    UNKNOWN = "unknown"
    """A state this client does not know (sent by a newer daemon)."""

    def is_terminal(self) -> bool:
        """Whether the job has ended for good (succeeded, failed or cancelled)."""
        return self in TERMINAL_STATES

    @classmethod
    def parse(cls, name: str) -> JobState:
        """The state named ``name`` (as event data carries it); UNKNOWN for a name this client lacks."""
        try:
            return cls(name)
        except ValueError:
            return cls.UNKNOWN


TERMINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class StageState(enum.StrEnum):
    """The state of one pipeline stage of a job."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"
    """A stage state this client does not know (sent by a newer daemon)."""

    @classmethod
    def parse(cls, name: str) -> StageState:
        """The stage state named ``name``; UNKNOWN for a name this client lacks."""
        try:
            return cls(name)
        except ValueError:
            return cls.UNKNOWN


class EventType(enum.StrEnum):
    """The event types a job emits. ``JobEvent.type`` keeps the daemon's text (a newer daemon may
    add types); it compares equal to these members."""

    STATE = "state"
    STAGE_STARTED = "stage_started"
    STAGE_COMPLETED = "stage_completed"
    STAGE_SKIPPED = "stage_skipped"
    PROGRESS = "progress"
    EVAL = "eval"
    GENERATION_EVAL = "generation_eval"
    GPU_SAMPLE = "gpu_sample"
    PLAN = "plan"
    RESULT = "result"
    FAILED = "failed"
    CHECKPOINT = "checkpoint"
    WARNING = "warning"
    LOG = "log"
    OOM_RECOVERY = "oom_recovery"


class _Serializable:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this result."""
        return dataclasses.asdict(self)  # type: ignore[call-overload,no-any-return]


@dataclass(frozen=True)
class ConfigIssue(_Serializable):
    """One config error or warning; ``line`` is 1-based or None when unknown."""

    path: str
    line: int | None
    message: str


@dataclass(frozen=True)
class ValidationResult(_Serializable):
    """The outcome of validating a config file."""

    valid: bool
    errors: list[ConfigIssue]
    warnings: list[ConfigIssue]


@dataclass(frozen=True)
class GpuInfo(_Serializable):
    """One GPU as the daemon sees it; -1 means unknown."""

    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_percent: int
    temperature_c: int
    owner_job_id: str


@dataclass(frozen=True)
class Recommendation(_Serializable):
    """Suggested training settings for the default model on the visible GPUs."""

    model: str
    strategy: str
    world_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    precision: str
    gradient_checkpointing: bool
    reason: str


@dataclass(frozen=True)
class ClusterHold(_Serializable):
    """What one job holds on a cluster node (``job_id`` empty: another Ray user)."""

    job_id: str
    gpus: float
    cpus: float


@dataclass(frozen=True)
class ClusterNode(_Serializable):
    """One node of the Ray cluster the daemon is attached to.

    ``gpus`` are read through NVML on the node; a node that did not answer in time shows Ray's count
    (name: Ray's accelerator type, memory -1: unknown). Ray reserves GPUs by count, so ``held_by``
    says how many each job holds.
    """

    node_id: str
    address: str
    hostname: str
    alive: bool
    gpus: list[GpuInfo]
    cpus: int
    local: bool
    held_by: list[ClusterHold]

    @property
    def gpus_held(self) -> int:
        """GPUs of this node reserved by jobs."""
        return int(sum(h.gpus for h in self.held_by) + 0.999)


@dataclass(frozen=True)
class GpuList(_Serializable):
    """``list_gpus()`` result.

    ``nodes`` is None unless the daemon is attached to a Ray cluster (``cryptotuned --ray-address``);
    then it lists every node (empty, with ``cluster_note`` saying why, when the cluster did not answer).
    """

    gpus: list[GpuInfo]
    recommendation: Recommendation
    note: str
    nodes: list[ClusterNode] | None = None
    ray_address: str = ""
    cluster_note: str = ""


@dataclass(frozen=True)
class RecordIssue(_Serializable):
    """A problem with one data record (index -1: the whole file)."""

    line: int
    index: int
    field: str
    message: str


@dataclass(frozen=True)
class LengthStats(_Serializable):
    """Token-length percentiles."""

    min: int
    p50: int
    p90: int
    p99: int
    max: int


@dataclass(frozen=True)
class DataSample(_Serializable):
    """One record with its exact training text and the part that carries the loss."""

    index: int
    line: int
    record: dict[str, Any]
    rendered_text: str
    trained_text: str
    tokens: int


@dataclass(frozen=True)
class DataInspection(_Serializable):
    """``inspect_data()`` result."""

    format: str
    source_format: str
    records_total: int
    records_valid: int
    records_invalid: int
    errors: list[RecordIssue]
    warnings: list[RecordIssue]
    difficulty_counts: dict[str, int]
    with_thinking: int
    crypto_terms_top: list[tuple[str, int]]
    duplicates: int
    token_lengths: LengthStats
    token_lengths_by_part: dict[str, LengthStats]
    over_max_seq_length: int
    over_max_seq_length_indices: list[int]
    max_seq_length: int
    tokenizer: str
    samples: list[DataSample]


@dataclass(frozen=True)
class StageStatus(_Serializable):
    """A pipeline stage and its state."""

    name: str
    state: StageState
    seconds: float = 0.0


@dataclass(frozen=True)
class Progress(_Serializable):
    """Training progress of a job."""

    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class Job(_Serializable):
    """A training job as stored by the daemon."""

    job_id: str
    pipeline_id: str
    state: JobState
    stage: str
    stages: list[StageStatus]
    progress: Progress
    output_dir: str
    failure_reason: str
    created_at: float = 0.0
    updated_at: float = 0.0
    dry_run: bool = False
    resumed_from: str = ""
    plan: dict[str, Any] | None = None
    device: str = ""
    waiting_for: str = ""  # what a queued job waits for (a Ray job: nodes and GPUs), "" otherwise

    @property
    def terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        return self.state.is_terminal()

    def status_dict(self) -> dict[str, Any]:
        """The documented ``status --json`` shape."""
        return {
            "job_id": self.job_id,
            "pipeline_id": self.pipeline_id,
            "state": self.state.value,
            "stage": self.stage,
            "stages": [{"name": s.name, "state": s.state.value} for s in self.stages],
            "progress": {
                "step": self.progress.step,
                "total_steps": self.progress.total_steps,
                "epoch": self.progress.epoch,
                "loss": self.progress.loss,
                "learning_rate": self.progress.learning_rate,
                "tokens_per_second": self.progress.tokens_per_second,
                "eta_seconds": self.progress.eta_seconds,
            },
            "output_dir": self.output_dir,
            "failure_reason": self.failure_reason,
            "waiting_for": self.waiting_for,
            "dry_run": self.dry_run,
            "plan": self.plan,
            "resumed_from": self.resumed_from,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class JobEvent(_Serializable):
    """One event of a job: ``seq`` is per job, gap-free, starting at 1."""

    job_id: str
    seq: int
    type: str
    ts: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatStatus(_Serializable):
    """Where a chat stands before its first piece: ``queued`` (waiting for a GPU or for another chat),
    ``loading`` (the model is being loaded) or ``ready``; ``device`` is ``cpu`` or a GPU uuid."""

    state: str
    message: str
    device: str


@dataclass(frozen=True)
class ChatPiece(_Serializable):
    """A decoded piece of an answer (``model``: tuned or base; ``channel``: reasoning or answer)."""

    model: str
    channel: str
    text: str


@dataclass(frozen=True)
class ChatDone(_Serializable):
    """One model's whole answer; ``finish_reason`` is ``stop`` (end of turn) or ``length`` (the cap)."""

    model: str
    reasoning: str
    answer: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str


ChatEvent = ChatStatus | ChatPiece | ChatDone


@dataclass(frozen=True)
class ExportProgress(_Serializable):
    """Progress of an export: a phase, and steps (or bytes, while files are sent) done of a total."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class ServingCheck(_Serializable):
    """Whether vLLM would load an exported adapter for Qwen3; ``problems`` say what would not load and why."""

    loadable: bool
    problems: list[str]
    base_model: str
    name: str
    rank: int
    max_lora_rank: int

    def vllm_command(self, adapter_dir: str) -> str:
        """The ``vllm serve`` command that serves the adapter found in ``adapter_dir``."""
        return (
            f"vllm serve {self.base_model} --enable-lora --lora-modules {self.name}={adapter_dir} "
            f"--max-lora-rank {self.max_lora_rank} --reasoning-parser deepseek_r1"
        )
