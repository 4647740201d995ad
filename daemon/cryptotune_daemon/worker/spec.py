"""The job spec: the daemon↔worker contract (``spec.json``, handed to the worker as ``--spec``).

The daemon builds a :class:`JobSpec` when a job is submitted (``jobs/submission.py``), stores it as
:meth:`JobSpec.to_json`, changes it with :func:`dataclasses.replace` (a resume, a launch) and writes
it into the job dir; the worker reads it back with :func:`load_spec`. Nothing else assembles or
parses a spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.faults import NO_FAULTS, FaultInjection
from cryptotune_daemon.training.oom_relaunch import OomRelaunchRequest


@dataclass(frozen=True)
class ResumeSpec:
    """Where to resume: the pipeline's output dir and an optional checkpoint step (None: newest).

    ``oom`` is set when the daemon relaunches a multi-process job that ran out of memory: the run
    continues with the request's smaller micro-batch. ``lost_node`` is set when a job on Ray lost a
    node (what was lost, in words): its driver waits only ``--ray-node-wait-s`` for room again.
    """

    output_dir: Path
    step: int | None = None
    oom: OomRelaunchRequest | None = None
    lost_node: str = ""

    def to_json(self) -> dict[str, Any]:
        """The spec's ``resume`` object."""
        raw: dict[str, Any] = {"output_dir": str(self.output_dir), "step": self.step}
        if self.oom is not None:
            raw["oom"] = self.oom.to_json()
        if self.lost_node:
            raw["lost_node"] = self.lost_node
        return raw


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job.

    Attributes:
        job_id: the daemon's job id.
        pipeline_id: the pipeline this job runs (stable across resumes).
        data_path: the uploaded data file.
        data_name: the file's display name (used in messages).
        config_yaml: the raw YAML config text.
        config_name: the config's display name.
        output_dir: absolute output directory of the pipeline.
        state_dir: the daemon's state dir; caches live under ``state_dir/cache/``.
        dry_run: stop after ``config_gen`` (the plan is the result).
        resume: resume target, or None for a fresh run.
        device: ``cpu`` or ``cuda``.
        allow_remote_code: whether ``model.trust_remote_code`` may be honoured.
        events_path: the JSON-lines event file rank 0 appends to.
        data_digest: the uploaded data's content digest (the daemon's record; the worker hashes the file).
        world_size: processes the daemon launches for the job (torchrun above 1), ranks in total.
        nodes: machines the ranks span (``parallel.nodes``); above 1 the job runs on Ray.
        fault_injection: test-only faults (set only by a daemon started with --enable-fault-injection).
    """

    job_id: str
    pipeline_id: str
    data_path: Path
    data_name: str
    config_yaml: str
    config_name: str
    output_dir: Path
    state_dir: Path
    dry_run: bool = False
    resume: ResumeSpec | None = None
    device: str = "cpu"
    allow_remote_code: bool = False
    events_path: Path | None = None
    data_digest: str = ""
    world_size: int = 1
    nodes: int = 1
    fault_injection: FaultInjection = NO_FAULTS

    @property
    def on_ray(self) -> bool:
        """Whether the job spans machines: its worker is a Ray driver (``worker/ray_driver.py``)."""
        return self.nodes > 1

    @property
    def cache_dir(self) -> Path:
        """Where tokenizer and tokenised-data caches live."""
        return self.state_dir / "cache"

    def to_json(self) -> dict[str, Any]:
        """The spec's JSON object (what :meth:`from_json` reads back)."""
        return {
            "job_id": self.job_id,
            "pipeline_id": self.pipeline_id,
            "data_path": str(self.data_path),
            "data_digest": self.data_digest,
            "data_name": self.data_name,
            "config_yaml": self.config_yaml,
            "config_name": self.config_name,
            "output_dir": str(self.output_dir),
            "state_dir": str(self.state_dir),
            "dry_run": self.dry_run,
            "resume": None if self.resume is None else self.resume.to_json(),
            "world_size": self.world_size,
            "nodes": self.nodes,
            "device": self.device,
            "allow_remote_code": self.allow_remote_code,
            "events_path": None if self.events_path is None else str(self.events_path),
            "fault_injection": self.fault_injection.to_json(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobSpec:
        """Builds a spec from its JSON object.

        Raises:
            CryptotuneError: REQUEST_INVALID when a required field is missing or malformed.
        """
        return parse_spec(raw)


def _required(raw: dict[str, Any], key: str) -> Any:
    if key not in raw or raw[key] is None:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"job spec is missing '{key}'")
    return raw[key]


def parse_spec(raw: dict[str, Any]) -> JobSpec:
    """Builds a :class:`JobSpec` from the spec's JSON object.

    Raises:
        CryptotuneError: REQUEST_INVALID when a required field is missing or malformed.
    """
    resume_raw = raw.get("resume")
    resume: ResumeSpec | None = None
    if isinstance(resume_raw, dict):
        step, oom = resume_raw.get("step"), resume_raw.get("oom")
        try:
            request = None if oom is None else OomRelaunchRequest.from_json(oom)
        except ValueError as error:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"job spec 'resume.oom': {error}") from error
        resume = ResumeSpec(
            output_dir=Path(str(resume_raw.get("output_dir") or _required(raw, "output_dir"))),
            step=int(step) if step is not None else None,
            oom=request,
            lost_node=str(resume_raw.get("lost_node") or ""),
        )
    elif resume_raw is not None:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, "job spec 'resume' must be null or an object")
    device = str(raw.get("device") or "cpu")
    if device not in ("cpu", "cuda"):
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"job spec 'device' must be cpu or cuda, got '{device}'"
        )
    output_dir = Path(str(_required(raw, "output_dir")))
    if not output_dir.is_absolute():
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"job spec 'output_dir' must be absolute: {output_dir}"
        )
    events = raw.get("events_path")
    return JobSpec(
        job_id=str(raw.get("job_id") or "local"),
        pipeline_id=str(_required(raw, "pipeline_id")),
        data_path=Path(str(_required(raw, "data_path"))),
        data_name=str(raw.get("data_name") or Path(str(raw["data_path"])).name),
        config_yaml=str(_required(raw, "config_yaml")),
        config_name=str(raw.get("config_name") or "config.yaml"),
        output_dir=output_dir,
        state_dir=Path(str(_required(raw, "state_dir"))),
        dry_run=bool(raw.get("dry_run", False)),
        resume=resume,
        device=device,
        allow_remote_code=bool(raw.get("allow_remote_code", False)),
        events_path=Path(str(events)) if events else None,
        data_digest=str(raw.get("data_digest") or ""),
        world_size=_positive_int(raw.get("world_size", 1), "world_size"),
        nodes=_positive_int(raw.get("nodes", 1), "nodes"),
        fault_injection=FaultInjection.from_json(
            _object_or_none(raw.get("fault_injection"), "fault_injection")
        ),
    )


def _object_or_none(value: Any, key: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"job spec '{key}' must be null or an object")


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"job spec '{key}' must be a positive integer")
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"job spec '{key}' must be a positive integer")
    return number


def load_spec(path: Path) -> JobSpec:
    """Reads and parses a spec file.

    Raises:
        CryptotuneError: REQUEST_INVALID when the file is unreadable or malformed.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"cannot read job spec {path}: {error}") from error
    if not isinstance(raw, dict):
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"job spec {path} is not a JSON object")
    return parse_spec(raw)
