"""The daemon → warm worker contract: one message that hands a job to an idle warm worker.

The daemon and each warm worker share a ``SOCK_SEQPACKET`` unix socket pair (messages keep their
boundaries; closing one end is an end of file for the other). A job is handed over in one message:
its :class:`Handover` as JSON, and two descriptors passed with ``SCM_RIGHTS`` — the job lock (already
held shared by the daemon, so the lock never has a gap) and the job's log opened for appending.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

MAX_MESSAGE_BYTES = 1024 * 1024  # a spec path, a job dir and an environment fit many times over
_FDS = 2  # the job lock, the log


@dataclass(frozen=True)
class Handover:
    """What a warm worker needs to become a job's worker.

    Attributes:
        spec_path: the job spec the worker runs.
        job_dir: the job's directory (working directory, lock and pid files).
        env: the job's whole environment (the worker replaces its own with it).
    """

    spec_path: Path
    job_dir: Path
    env: dict[str, str]

    def to_json(self) -> dict[str, object]:
        return {"spec_path": str(self.spec_path), "job_dir": str(self.job_dir), "env": dict(self.env)}

    @classmethod
    def from_json(cls, raw: object) -> Handover:
        """Raises ValueError on anything but a well-formed message."""
        if not isinstance(raw, dict):
            raise ValueError("a handover is a JSON object")
        env = raw.get("env")
        spec_path, job_dir = raw.get("spec_path"), raw.get("job_dir")
        if not isinstance(spec_path, str) or not isinstance(job_dir, str) or not isinstance(env, dict):
            raise ValueError("a handover needs spec_path, job_dir and env")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("a handover's env maps strings to strings")
        return cls(spec_path=Path(spec_path), job_dir=Path(job_dir), env=dict(env))


@dataclass(frozen=True)
class ReceivedJob:
    """A handover and the descriptors that came with it (the receiver owns and closes them)."""

    handover: Handover
    lock_fd: int
    log_fd: int


def send_handover(channel: socket.socket, handover: Handover, lock_fd: int, log_fd: int) -> None:
    """Hands a job over in one message (atomic on a SEQPACKET socket: all of it arrives or none).

    Raises:
        OSError: the warm worker is gone (its end is closed) or the message could not be sent.
    """
    payload = json.dumps(handover.to_json(), ensure_ascii=False).encode()
    if len(payload) > MAX_MESSAGE_BYTES:
        raise OSError(f"the handover message is {len(payload)} bytes, above {MAX_MESSAGE_BYTES}")
    socket.send_fds(channel, [payload], [lock_fd, log_fd])


def receive_handover(channel: socket.socket) -> ReceivedJob | None:
    """Waits for a job; None when the daemon closed its end (it stopped or died) first.

    Raises:
        ValueError: a message without both descriptors or with a malformed body (its descriptors
            are closed).
    """
    fds = array.array("i")
    data, ancdata, _flags, _addr = channel.recvmsg(MAX_MESSAGE_BYTES, socket.CMSG_SPACE(_FDS * fds.itemsize))
    for level, kind, item in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(item[: len(item) - (len(item) % fds.itemsize)])
    received = list(fds)
    if not data and not received:
        return None
    try:
        if len(received) != _FDS:
            raise ValueError(f"a handover carries {_FDS} descriptors, this one {len(received)}")
        handover = Handover.from_json(json.loads(data))
    except ValueError:
        for fd in received:
            _close_quietly(fd)
        raise
    return ReceivedJob(handover=handover, lock_fd=received[0], log_fd=received[1])


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
