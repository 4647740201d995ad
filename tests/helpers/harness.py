"""A daemon a test kills and restarts, and what to check in the events of the jobs it ran."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from cryptotune import Client
from cryptotune.errors import DaemonUnavailable
from cryptotune_daemon.faults import ENABLE_FLAG, INJECT_FLAG
from cryptotune_daemon.jobs import worker_process as wp
from tests.helpers.tokenizer_cache import seed_tokenizer_cache
from tests.integration.conftest import (
    BIN,
    RunningDaemon,
    kill_job_workers,
    start_daemon,
)

WAIT_S = 240.0  # bound on any single wait for a job's progress


def fault_flags(faults: tuple[str, ...]) -> list[str]:
    """The daemon flags that inject ``faults`` (KIND=VALUE) into its jobs."""
    return [ENABLE_FLAG, *(arg for fault in faults for arg in (INJECT_FLAG, fault))] if faults else []


@dataclass(frozen=True)
class Event:
    """A stored job event, read straight from the daemon's database."""

    seq: int
    type: str
    data: dict[str, Any]
    ts: float


class Harness:
    """One state dir whose daemon a test kills and restarts; cleans up every process it leaves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.address = f"unix://{self.state_dir}/d.sock"
        self.daemon: RunningDaemon | None = None

    # -- the daemon ------------------------------------------------------------------------------

    def start(self, faults: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> RunningDaemon:
        """Starts the daemon; ``faults`` are injected into its jobs (``--inject-fault``, faults.py)."""
        assert self.daemon is None or self.daemon.process.poll() is not None, "a daemon still runs"
        self.daemon = start_daemon(self.state_dir, *fault_flags(faults), *extra)
        return self.daemon

    def start_observing_health(self, faults: tuple[str, ...]) -> list[str]:
        """Starts the daemon and returns every health status it answered until SERVING."""
        assert self.daemon is None or self.daemon.process.poll() is not None, "a daemon still runs"
        log_path = self.state_dir.parent / f"{self.state_dir.name}-daemon.log"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        seed_tokenizer_cache(self.state_dir)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    str(BIN / "cryptotuned"),
                    "--state-dir",
                    str(self.state_dir),
                    "--listen",
                    self.address,
                    "--warm-workers",
                    "0",
                    *fault_flags(faults),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
        self.daemon = RunningDaemon(process, self.state_dir, self.address, log_path)
        seen: list[str] = []
        deadline = time.monotonic() + 60
        with Client(self.address) as client:
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(DaemonUnavailable):
                    status = client.ping(timeout=1.0)
                    if not seen or seen[-1] != status:
                        seen.append(status)
                    if status == "SERVING":
                        return seen
                time.sleep(0.05)
        raise AssertionError(f"the daemon never became SERVING (saw {seen}):\n{self.log()}")

    def kill9(self) -> None:
        assert self.daemon is not None
        self.daemon.process.kill()
        self.daemon.process.wait(timeout=10)

    def sigterm(self, timeout: float, during: Callable[[], None] | None = None) -> int:
        """SIGTERM to the daemon (then runs ``during``); returns its exit code (``timeout`` guards a hang)."""
        assert self.daemon is not None
        self.daemon.process.send_signal(signal.SIGTERM)
        if during is not None:
            during()
        try:
            code = self.daemon.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.daemon.process.kill()
            self.daemon.process.wait(timeout=10)
            raise AssertionError(f"the daemon did not exit within {timeout} s of SIGTERM") from None
        return code

    def client(self) -> Client:
        return Client(self.address)

    def log(self) -> str:
        path = self.state_dir.parent / f"{self.state_dir.name}-daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the store, read directly (works while the daemon is down) ---------------------------------

    def _db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.state_dir / "jobs.sqlite3", timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def job_row(self, job_id: str) -> dict[str, Any]:
        with contextlib.closing(self._db()) as conn:
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        assert row is not None, f"job {job_id} is gone from the store"
        return dict(row)

    def forget_worker_in_db(self, job_id: str) -> None:
        """What a daemon killed between starting a worker and storing its pid leaves behind."""
        assert self.daemon is None or self.daemon.process.poll() is not None
        with contextlib.closing(self._db()) as conn, conn:
            conn.execute(
                "UPDATE jobs SET worker_pid = NULL, worker_started_at = NULL WHERE job_id = ?", (job_id,)
            )

    def events(self, job_id: str) -> list[Event]:
        with contextlib.closing(self._db()) as conn:
            rows = conn.execute(
                "SELECT seq, type, data_json, ts FROM events WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        return [Event(r["seq"], r["type"], json.loads(r["data_json"]), r["ts"]) for r in rows]

    def wait_events(
        self, job_id: str, done: Callable[[list[Event]], bool], what: str, timeout: float = WAIT_S
    ) -> list[Event]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events(job_id)
            if done(events):
                return events
            if any(e.type == "state" and e.data["state"] in ("failed", "cancelled") for e in events):
                raise AssertionError(f"job ended while waiting for {what}: {describe(events)}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-3000:]}")

    # -- the job's processes ---------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id

    def processes(self, job_id: str) -> list[psutil.Process]:
        """Every live process of the job: recorded ones, the leader's descendants, its environment."""
        job_dir = self.job_dir(job_id)
        found: dict[int, psutil.Process] = {}
        for handle in wp.live_processes(job_dir):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(handle.pid)
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(wp.JOB_DIR_ENV) == str(job_dir):
                    found[proc.pid] = proc
        return [p for p in found.values() if alive(p)]

    def kill_job(self, job_id: str) -> int:
        """SIGKILLs every process of the job (a crash that takes the workers too); returns how many."""
        victims = self.processes(job_id)
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in victims), "SIGKILLed processes did not die"
        return len(victims)

    def close(self) -> None:
        if self.daemon is not None and self.daemon.process.poll() is None:
            self.daemon.process.kill()
            self.daemon.process.wait(timeout=10)
        jobs = self.state_dir / "jobs"
        if jobs.is_dir():
            for job_dir in jobs.iterdir():
                with contextlib.suppress(Exception):
                    self.kill_job(job_dir.name)
        kill_job_workers(self.state_dir)


def alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def describe(events: list[Event]) -> str:
    return ", ".join(
        f"{e.type}:{e.data.get('state') or e.data.get('step') or e.data.get('stage') or ''}" for e in events
    )


def progress_max(events: list[Event]) -> int:
    return max((int(e.data["step"]) for e in events if e.type == "progress"), default=0)


def checkpoints(events: list[Event]) -> list[int]:
    return [int(e.data["step"]) for e in events if e.type == "checkpoint"]


def states(events: list[Event]) -> list[str]:
    return [str(e.data["state"]) for e in events if e.type == "state"]


def check_runs(events: list[Event], total: int, save_steps: int) -> list[list[int]]:
    """Checks the steps of every run of a job (a run begins at each RUNNING) and returns them.

    Within a run steps are consecutive; the first run starts at 1; a resumed run starts right after
    a checkpoint (a multiple of save_steps) no older than the newest one announced before it and
    no newer than the last step trained; the last run ends at ``total``; together they cover 1..total.
    """
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "event seqs must be gap-free"
    runs: list[list[int]] = []
    announced: list[list[int]] = []  # checkpoints announced before each run began
    for event in events:
        if event.type == "state" and event.data["state"] == "running":
            runs.append([])
            announced.append(checkpoints(events[: event.seq]))
        elif event.type == "progress":
            assert runs, "progress before the job ran"
            runs[-1].append(int(event.data["step"]))
    trained = [run for run in runs if run]
    assert trained, describe(events)
    highest = 0
    for index, run in enumerate(runs):
        if not run:
            continue
        start = run[0]
        assert run == list(range(start, start + len(run))), f"run {index} repeats or skips a step: {run}"
        if highest == 0:
            assert start == 1, f"the first run starts at step {start}"
        else:
            resumed_from = start - 1
            assert resumed_from % save_steps == 0, f"run {index} resumed from {resumed_from}: no checkpoint"
            assert max(announced[index], default=0) <= resumed_from <= highest, (
                f"run {index} resumed from {resumed_from}; "
                f"checkpoints {announced[index]}, trained to {highest}"
            )
        highest = max(highest, run[-1])
    assert trained[-1][-1] == total, f"the last run ended at {trained[-1][-1]}, not {total}"
    assert sorted({s for run in trained for s in run}) == list(range(1, total + 1))
    return runs
