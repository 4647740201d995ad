"""Launching a job's worker in its own process group, and ending that whole group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

TERM_GRACE_S = 10.0


@dataclass(frozen=True)
class WorkerHandle:
    """A launched worker: the process-group leader's pid and its start time (guards pid reuse)."""

    pid: int
    started_at: float


def worker_command(spec_path: Path, world_size: int) -> list[str]:
    """The worker's command line: plain for one process, torchrun for several."""
    worker = ["-m", "cryptotune_daemon.worker", "--spec", str(spec_path)]
    if world_size <= 1:
        return [sys.executable, *worker]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world_size}",
        *worker,
    ]


def launch(spec_path: Path, world_size: int, log_path: Path, env: dict[str, str]) -> WorkerHandle:
    """Starts the worker in a new session (its own process group) so a cancel reaches its whole tree."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            worker_command(spec_path, world_size),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=spec_path.parent,
        )
    # The Popen object is dropped on purpose: the daemon follows workers by pid so that it can
    # reattach to them after its own restart. A reaper thread collects the exit status.
    _reap_in_background(process)
    return WorkerHandle(pid=process.pid, started_at=_start_time(process.pid) or time.time())


_EXIT_CODES: dict[int, int] = {}


def _reap_in_background(process: subprocess.Popen[bytes]) -> None:
    import threading

    def wait() -> None:
        _EXIT_CODES[process.pid] = process.wait()

    threading.Thread(target=wait, name=f"reap-{process.pid}", daemon=True).start()


def exit_code(pid: int) -> int | None:
    """The exit code of a worker this daemon launched (negative: killed by that signal), if known."""
    return _EXIT_CODES.get(pid)


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_alive(handle: WorkerHandle) -> bool:
    """Whether the worker's leader still runs (and is the same process, not a reused pid)."""
    if handle.pid in _EXIT_CODES:
        return False
    started = _start_time(handle.pid)
    if started is None:
        return False
    try:
        if psutil.Process(handle.pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    return abs(started - handle.started_at) < 2.0


def group_alive(pgid: int) -> bool:
    """Whether any process of the group remains (GPUs go back to the pool only when none does)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg succeeds while only zombies remain; look for a live member.
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Sends ``sig`` to the whole process group; a vanished group is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_new_events(path: Path, offset: int) -> tuple[list[tuple[str, dict[str, object], float]], int]:
    """Complete JSON lines appended to the worker's event file since ``offset``.

    Returns the parsed events and the offset after the last complete line (a partial last line
    is left for the next read, so an event is never ingested twice or half).
    """
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    events: list[tuple[str, dict[str, object], float]] = []
    for raw in chunk[: end + 1].splitlines():
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
            events.append(
                (str(item["type"]), dict(item.get("data") or {}), float(item.get("ts") or time.time()))
            )
        except (ValueError, KeyError, TypeError):
            events.append(("log", {"message": f"unreadable worker event: {raw[:200]!r}"}, time.time()))
    return events, offset + end + 1
