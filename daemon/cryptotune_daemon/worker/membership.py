"""How a worker process joins its job: the shared job lock and a line in the job's process record.

The daemon side (``jobs/worker_process.py``) launches workers, follows and signals every process of
a job through what this module records.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from cryptotune_daemon.layout import LOCK_FILE, PIDS_FILE

JOB_DIR_ENV = "CRYPTOTUNE_JOB_DIR"


_JOINED: list[int] = []  # the job lock descriptors this process holds until it exits


def join_job(environ: Mapping[str, str] | None = None) -> bool:
    """Makes this worker process a member of its job (called first thing by every worker process).

    Takes the shared job lock for the life of the process and records the pid, so the daemon
    sees and can signal torchrun ranks, which live in sessions of their own. A no-op outside a
    daemon-launched job.

    Returns:
        Whether the process joined a job.
    """
    env = os.environ if environ is None else environ
    raw = env.get(JOB_DIR_ENV, "")
    if not raw:
        return False
    job_dir = Path(raw)
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)  # released by the kernel when this process (and its forks) end
    _JOINED.append(fd)
    started = process_start_time(os.getpid()) or time.time()
    record_process(job_dir, os.getpid(), started, "rank" if "RANK" in env else "worker")
    return True


def adopt_lock(fd: int) -> None:
    """Keeps a job lock descriptor the daemon handed over (held shared already) until the process ends."""
    _JOINED.append(fd)


def record_process(job_dir: Path, pid: int, started_at: float, role: str) -> None:
    """Appends one process (leader, worker or rank) to the job's process record."""
    line = json.dumps({"pid": pid, "started_at": started_at, "role": role}) + "\n"
    fd = os.open(job_dir / PIDS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode())  # one O_APPEND write: lines from several ranks never interleave
    finally:
        os.close(fd)


def process_start_time(pid: int) -> float | None:
    """When ``pid`` started (guards against pid reuse); None when it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
