"""Out-of-memory in a multi-process job: the rank that ran out asks the daemon for a relaunch.

One process cannot shrink its micro-batch alone: its peers wait for it in a gradient all-reduce and
every rank must split each step the same way. So the rank that ran out of memory writes this
request into the job directory and fails; torchrun ends its peers; the daemon, seeing the request,
queues the job again to continue from the newest verified checkpoint with the halved micro-batch
(and doubled accumulation, so the effective batch and learning-rate schedule stay the same). The
relaunched worker applies the new split and reports it as an ``oom_recovery`` event.

This module has no torch import: the daemon reads the request too.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptotune_daemon.layout import OOM_RELAUNCH_FILE

REQUEST_FILE = OOM_RELAUNCH_FILE


@dataclass(frozen=True)
class OomRelaunchRequest:
    """What ran out of memory, and the split to continue with.

    Attributes:
        step: the optimiser step that ran out of memory.
        rank: the process that ran out of memory.
        old_micro_batch, old_accumulation: the split that did not fit.
        new_micro_batch, new_accumulation: the halved split, or None when the micro-batch was 1.
        message: the out-of-memory reason for users (the failure reason when nothing is left to halve).
    """

    step: int
    rank: int
    old_micro_batch: int
    old_accumulation: int
    new_micro_batch: int | None
    new_accumulation: int | None
    message: str

    @property
    def can_continue(self) -> bool:
        """Whether a smaller micro-batch exists to continue with."""
        return self.new_micro_batch is not None and self.new_accumulation is not None

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the request file and in the relaunched job's spec."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: object) -> OomRelaunchRequest:
        """Parses :meth:`to_json`'s output.

        Raises:
            ValueError: when ``raw`` is not such an object.
        """
        if not isinstance(raw, dict):
            raise ValueError("an OOM relaunch request must be a JSON object")
        try:
            new_micro, new_accumulation = raw.get("new_micro_batch"), raw.get("new_accumulation")
            return cls(
                step=int(raw["step"]),
                rank=int(raw["rank"]),
                old_micro_batch=int(raw["old_micro_batch"]),
                old_accumulation=int(raw["old_accumulation"]),
                new_micro_batch=None if new_micro is None else int(new_micro),
                new_accumulation=None if new_accumulation is None else int(new_accumulation),
                message=str(raw.get("message") or "out of memory"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed OOM relaunch request: {error}") from error


def write_request(job_dir: Path, request: OomRelaunchRequest) -> None:
    """Writes the request atomically (several ranks may run out of memory at once; any one will do)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    temp = job_dir / f".{REQUEST_FILE}.{os.getpid()}"
    temp.write_text(json.dumps(request.to_json()), encoding="utf-8")
    os.replace(temp, job_dir / REQUEST_FILE)


def read_request(job_dir: Path) -> OomRelaunchRequest | None:
    """The pending request of a job, or None when there is none.

    Raises:
        ValueError: when the file exists but cannot be parsed.
    """
    try:
        text = (job_dir / REQUEST_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return OomRelaunchRequest.from_json(json.loads(text))


def clear_request(job_dir: Path) -> None:
    """Removes the job's request (once handled, or left over by an earlier run)."""
    with contextlib.suppress(FileNotFoundError):
        (job_dir / REQUEST_FILE).unlink()
