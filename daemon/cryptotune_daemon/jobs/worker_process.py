"""Launching a job's worker in its own process group, following every process of it, ending them all.

Each launch owns ``<job_dir>/worker.lock``: every process of the job holds a shared ``flock`` on it
for as long as it lives (the leader through a descriptor the daemon hands it, each torchrun rank
by taking it itself, forked children by inheritance). The daemon starts a worker only after an
exclusive lock proves that no process of an earlier launch remains, so one job never has two
workers, and a job's GPUs return to the pool only when the lock is free. torchrun starts every
rank in a session of its own, so the process group alone cannot find them: each process also
records its pid in ``<job_dir>/worker.pids``, which is what a cancel signals.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from cryptotune_daemon.layout import LOCK_FILE, PIDS_FILE
from cryptotune_daemon.worker.handover import Handover, send_handover
from cryptotune_daemon.worker.membership import JOB_DIR_ENV, process_start_time, record_process

TERM_GRACE_S = 10.0
_START_TIME_TOLERANCE_S = 2.0


@dataclass(frozen=True)
class WorkerHandle:
    """A launched worker: the process-group leader's pid and its start time (guards pid reuse)."""

    pid: int
    started_at: float


class WorkerStillRunning(Exception):
    """A process of the job's previous worker still holds the job lock: launching would make two."""


@dataclass(frozen=True)
class RayTarget:
    """Where a job on Ray runs: the daemon's ``--ray-address``, its namespace, the lost-node wait."""

    address: str
    namespace: str
    node_wait_s: float


def worker_command(spec_path: Path, world_size: int, ray: RayTarget | None = None) -> list[str]:
    """The worker's command line: plain for one process, torchrun for several, a Ray driver on Ray."""
    worker = ["-m", "cryptotune_daemon.worker", "--spec", str(spec_path)]
    if ray is not None:
        return [
            sys.executable,
            *worker,
            "--ray-address",
            ray.address,
            "--ray-namespace",
            ray.namespace,
            "--ray-node-wait-s",
            f"{ray.node_wait_s:g}",
        ]
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


def _claim(job_dir: Path) -> int:
    """Opens the job lock, proves it free (exclusive), then holds it shared for the new leader."""
    job_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkerStillRunning(f"a process of the previous worker of {job_dir.name} still runs") from None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def launch(
    spec_path: Path,
    world_size: int,
    log_path: Path,
    env: Mapping[str, str],
    job_dir: Path | None = None,
    ray: RayTarget | None = None,
) -> WorkerHandle:
    """Starts the worker in a new session (its own process group) so a cancel reaches its whole tree.

    Args:
        spec_path: the job spec the worker reads.
        world_size: processes to start (torchrun above 1).
        log_path: the worker's stdout and stderr.
        env: the worker's environment.
        job_dir: the job's directory (lock and pid files); defaults to the spec's directory.
        ray: for a job whose ranks span machines: start its Ray driver (``worker/ray_driver.py``).

    Raises:
        WorkerStillRunning: a process of an earlier launch of this job is still alive.
        OSError: the worker could not be started.
    """
    job_dir = job_dir or spec_path.parent
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = _claim(job_dir)
    try:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                worker_command(spec_path, world_size, ray),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                pass_fds=(lock_fd,),  # the leader holds the job lock from its first instruction
                env={**env, JOB_DIR_ENV: str(job_dir)},
                cwd=spec_path.parent,
            )
    finally:
        os.close(lock_fd)
    # The Popen object is dropped on purpose: the daemon follows workers by pid so that it can
    # reattach to them after its own restart. A reaper thread collects the exit status.
    follow_exit(process)
    handle = WorkerHandle(pid=process.pid, started_at=process_start_time(process.pid) or time.time())
    record_process(job_dir, handle.pid, handle.started_at, "leader")
    return handle


def launch_warm(
    warm_pid: int,
    channel: socket.socket,
    spec_path: Path,
    log_path: Path,
    env: Mapping[str, str],
    job_dir: Path,
) -> WorkerHandle:
    """Hands the job to an idle warm worker (``jobs/warm_pool.py``), which becomes its leader.

    The same guarantees as :func:`launch`: the warm worker leads a session of its own (a cancel
    reaches its whole tree), the job lock is proven free and handed over held (``SCM_RIGHTS``), the
    leader is recorded in ``worker.pids`` before the job reaches it, its stdout and stderr go to the
    job's log, and the job's environment (``CRYPTOTUNE_JOB_DIR`` included) is the one its children
    inherit.

    Raises:
        WorkerStillRunning: a process of an earlier launch of this job is still alive.
        OSError: the warm worker is gone; nothing was started (the caller launches cold).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = _claim(job_dir)
    try:
        started_at = process_start_time(warm_pid)
        if started_at is None:
            raise OSError(f"warm worker {warm_pid} is gone")
        handle = WorkerHandle(pid=warm_pid, started_at=started_at)
        record_process(job_dir, handle.pid, handle.started_at, "leader")
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            message = Handover(spec_path=spec_path, job_dir=job_dir, env={**env, JOB_DIR_ENV: str(job_dir)})
            send_handover(channel, message, lock_fd, log_fd)
        except OSError:
            forget_processes(job_dir)  # it never became the leader
            raise
        finally:
            os.close(log_fd)
    finally:
        os.close(lock_fd)
        channel.close()
    return handle


def forget_processes(job_dir: Path) -> None:
    """Starts a new launch's record (call only when :func:`job_alive` is False)."""
    with contextlib.suppress(FileNotFoundError):
        (job_dir / PIDS_FILE).unlink()


def _recorded(job_dir: Path) -> list[tuple[WorkerHandle, str]]:
    try:
        text = (job_dir / PIDS_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            item = json.loads(line)
            found.append((WorkerHandle(int(item["pid"]), float(item["started_at"])), str(item["role"])))
    return found


def recorded_leader(job_dir: Path) -> WorkerHandle | None:
    """The leader of the job's latest launch: as the daemon recorded it, else as a plain (not
    torchrun) worker recorded itself; None when neither did."""
    recorded = _recorded(job_dir)
    for wanted in ("leader", "worker"):
        found = next((h for h, role in recorded if role == wanted), None)
        if found is not None:
            return found
    return None


def live_processes(job_dir: Path) -> list[WorkerHandle]:
    """Recorded processes of the job's latest launch that still run (same pid and start time)."""
    return [h for h, _ in _recorded(job_dir) if _running(h)]


_EXIT_CODES: dict[int, int] = {}


def follow_exit(process: subprocess.Popen[bytes]) -> None:
    """Collects the exit code of a process this daemon started, in a thread (see :func:`exit_code`)."""
    _EXIT_CODES.pop(process.pid, None)  # a reused pid: that earlier worker's code is not this one's

    def wait() -> None:
        _EXIT_CODES[process.pid] = process.wait()

    threading.Thread(target=wait, name=f"reap-{process.pid}", daemon=True).start()


def exit_code(pid: int) -> int | None:
    """The exit code of a worker this daemon launched (negative: killed by that signal), if known."""
    return _EXIT_CODES.get(pid)


def _running(handle: WorkerHandle) -> bool:
    try:
        process = psutil.Process(handle.pid)
        if abs(process.create_time() - handle.started_at) >= _START_TIME_TOLERANCE_S:
            return False  # the pid was reused by another process
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def is_alive(handle: WorkerHandle) -> bool:
    """Whether the worker's leader still runs (and is the same process, not a reused pid)."""
    if handle.pid in _EXIT_CODES:
        return False
    return _running(handle)


def lock_held(job_dir: Path) -> bool:
    """Whether some process of the job holds its lock (i.e. still runs)."""
    try:
        fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group remains."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg succeeds while only zombies remain; look for a live member.
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def job_alive(job_dir: Path, handle: WorkerHandle | None) -> bool:
    """Whether any process of the job remains: lock holders, recorded pids, the leader's group, or
    a process whose environment names the job (a rank that has not joined yet).

    A job's GPUs (or CPU slot) go back to the pool, and a new worker may start for it, only
    once this is False.
    """
    if not job_dir.is_dir():
        return False
    if lock_held(job_dir) or live_processes(job_dir):
        return True
    if handle is not None and group_alive(handle.pid):
        return True
    return bool(_members_by_environment(job_dir))


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Sends ``sig`` to the whole process group; a vanished group is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _members_by_environment(job_dir: Path) -> list[int]:
    """Pids of processes whose environment names this job (every descendant of the leader inherits it)."""
    wanted = str(job_dir)
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(JOB_DIR_ENV) == wanted and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


def signal_job(job_dir: Path, handle: WorkerHandle | None, sig: signal.Signals) -> None:
    """Sends ``sig`` once to every process of the job, wherever it lives.

    The leader's process group, each recorded process's group (a torchrun rank leads a session of
    its own, with its dataloader children), and any process whose environment names the job
    (e.g. a forked child whose parent died and left it in a group nobody recorded).
    """
    groups: set[int] = set()
    if handle is not None:
        signal_group(handle.pid, sig)
        groups.add(handle.pid)
    members = [m.pid for m in live_processes(job_dir)] + _members_by_environment(job_dir)
    for pid in dict.fromkeys(members):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            pgid = os.getpgid(pid)
            if pgid in groups:
                continue  # already signalled with its group
            if pgid == pid:
                os.killpg(pid, sig)  # a torchrun rank leads its own session and children
                groups.add(pid)
            else:
                os.kill(pid, sig)


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


def drop_partial_events(path: Path, offset: int) -> None:
    """Cuts a half-written last line a dead worker left after ``offset`` (all before it is ingested).

    Without this the next worker's first event would be glued to the fragment and lost.
    """
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > offset:
            os.truncate(path, offset)
