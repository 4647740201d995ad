"""The warm worker pool: processes started ahead of jobs with torch, transformers and peft imported.

The daemon (which never imports those itself) spawns ``--warm-workers N`` of them at start-up —
fresh interpreters, so nothing of the daemon's, and no CUDA state, is inherited — each in a session
of its own and tied to the daemon by a socket pair: when the daemon goes away an idle warm worker
reads end of file and exits. A single-process job is handed to one
(:func:`~cryptotune_daemon.jobs.worker_process.launch_warm`), which is then replaced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptotune_daemon.jobs import worker_process as wp

log = logging.getLogger(__name__)


def may_use_warm_worker(world_size: int, warm_workers: int) -> bool:
    """Whether a job may start in a warm worker: one process only (torchrun jobs start cold), and
    the daemon keeps warm workers at all."""
    return world_size <= 1 and warm_workers > 0


@dataclass
class WarmWorker:
    """An idle warm worker: its process and the daemon's end of its socket."""

    process: subprocess.Popen[bytes]
    channel: socket.socket

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None and wp.exit_code(self.process.pid) is None


class WarmPool:
    """Keeps ``size`` idle warm workers (call :meth:`fill` after start-up and :meth:`take`)."""

    def __init__(self, size: int, cache_dir: Path, log_path: Path, env: Mapping[str, str]) -> None:
        self._size = size
        self._cache_dir = cache_dir
        self._log_path = log_path
        self._env = dict(env)
        self._idle: list[WarmWorker] = []
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    def fill(self) -> None:
        """Starts warm workers until ``size`` live ones are idle (a dead one is dropped)."""
        if self._closed:
            return
        for dead in [w for w in self._idle if not w.alive()]:
            log.warning("warm worker %s ended on its own (exit code %s)", dead.pid, wp.exit_code(dead.pid))
            dead.channel.close()
            self._idle.remove(dead)
        while len(self._idle) < self._size:
            try:
                self._idle.append(self._spawn())
            except OSError:
                log.exception("could not start a warm worker; jobs start cold meanwhile")
                return

    def take(self) -> WarmWorker | None:
        """An idle live warm worker, no longer in the pool (None when there is none)."""
        while self._idle:
            worker = self._idle.pop(0)
            if worker.alive():
                return worker
            worker.channel.close()
        return None

    def close(self) -> None:
        """Ends every idle warm worker (they hold nothing of any job) and starts no more."""
        self._closed = True
        for worker in self._idle:
            worker.channel.close()  # an idle worker exits on end of file once its imports are done
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGTERM)  # … but need not finish them first
        self._idle.clear()

    def _spawn(self) -> WarmWorker:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            command = [sys.executable, "-m", "cryptotune_daemon.worker", "--warm", str(theirs.fileno())]
            with self._log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    [*command, "--cache-dir", str(self._cache_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # the job's process group, once it has a job
                    close_fds=True,
                    pass_fds=(theirs.fileno(),),
                    env=warm_environment(self._env),
                    cwd=self._cache_dir.parent,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        wp.follow_exit(process)
        log.info("warm worker %s started", process.pid)
        return WarmWorker(process=process, channel=ours)


def warm_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A warm worker's environment until it gets a job: unbuffered output (read at interpreter
    start), and CUDA availability checked through NVML so that no CUDA context is created before
    the job's ``CUDA_VISIBLE_DEVICES`` is known."""
    return {**env, "PYTHONUNBUFFERED": "1", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
