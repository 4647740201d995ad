"""Fixtures that start a real daemon on a temp state dir and socket, and run the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cryptotune import Client
from cryptotune.errors import DaemonUnavailable
from tests.helpers.tokenizer_cache import seed_tokenizer_cache

if TYPE_CHECKING:
    from tests.helpers.harness import Harness

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0


@dataclass
class RunningDaemon:
    """A daemon process started for a test."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    address: str
    log_path: Path

    def client(self) -> Client:
        return Client(self.address)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logs_tail(self, limit: int = 3000) -> str:
        """The ends of the daemon's log and of each job's worker log: what a failed test shows."""
        parts = [f"daemon log ({self.log_path}):\n{_tail(self.log_path, limit)}"]
        jobs = sorted((self.state_dir / "jobs").glob("*/worker.log"))
        for worker_log in jobs[-3:]:
            parts.append(f"worker log of {worker_log.parent.name}:\n{_tail(worker_log, limit)}")
        return "\n\n".join(parts)


def _tail(path: Path, limit: int) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError as error:
        return f"(unreadable: {error})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used a daemon fixture shows the daemon's and its workers' logs (CI keeps
    nothing else: the fixture removes the state dir)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for running in _daemons_of(getattr(item, "funcargs", {})):
            report.sections.append(("daemon and worker logs", running.logs_tail()))


def _daemons_of(funcargs: dict[str, object]) -> list[RunningDaemon]:
    """The daemons among a test's fixtures (a fixture may hand one over inside a tuple)."""
    found: list[RunningDaemon] = []
    for value in funcargs.values():
        for part in value if isinstance(value, tuple) else (value,):
            if isinstance(part, RunningDaemon) and part not in found:
                found.append(part)
    return found


def short_tmp_dir() -> Path:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be too deep.
    return Path(tempfile.mkdtemp(prefix="ct-", dir="/tmp"))


def wait_serving(address: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with Client(address) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode}")
            with contextlib.suppress(DaemonUnavailable):
                if client.ping(timeout=1.0) == "SERVING":
                    return
            time.sleep(0.1)
    raise TimeoutError(f"daemon at {address} did not become SERVING")


def start_daemon(state_dir: Path, *extra: str, env: dict[str, str] | None = None) -> RunningDaemon:
    """Starts ``cryptotuned`` on a unix socket in ``state_dir`` and waits until it serves; its cache
    starts with the session's built Qwen3 tokenizer (tests/helpers/tokenizer_cache.py)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    seed_tokenizer_cache(state_dir)
    address = f"unix://{state_dir}/d.sock"
    log_path = state_dir.parent / f"{state_dir.name}-daemon.log"
    # Warm workers import torch at start-up: only the tests of the warm path ask for them.
    warm = () if any(a.startswith("--warm-workers") for a in extra) else ("--warm-workers", "0")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(BIN / "cryptotuned"), "--state-dir", str(state_dir), "--listen", address, *warm, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
    try:
        wait_serving(address, process)
    except Exception:
        process.kill()
        raise RuntimeError(f"daemon failed to start:\n{log_path.read_text(errors='replace')}") from None
    return RunningDaemon(process, state_dir, address, log_path)


def kill_job_workers(state_dir: Path) -> None:
    """Ends every worker process group a test daemon started (they outlive the daemon by design)."""
    db = state_dir / "jobs.sqlite3"
    if not db.exists():
        return
    with contextlib.closing(sqlite3.connect(db)) as conn:
        pids = [row[0] for row in conn.execute("SELECT worker_pid FROM jobs WHERE worker_pid IS NOT NULL")]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signal.SIGKILL)


def stop_daemon(daemon: RunningDaemon) -> None:
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
    kill_job_workers(daemon.state_dir)


@contextlib.contextmanager
def daemon_in_tmp(*extra: str) -> Iterator[RunningDaemon]:
    """A daemon in a fresh temporary state dir, stopped and removed afterwards."""
    root = short_tmp_dir()
    running = start_daemon(root / "state", *extra)
    try:
        yield running
    finally:
        stop_daemon(running)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def daemon() -> Iterator[RunningDaemon]:
    with daemon_in_tmp() as running:
        yield running


@pytest.fixture(scope="module")
def warm_daemon() -> Iterator[RunningDaemon]:
    """One daemon shared by a module's job tests, with one warm worker as users run it
    (``--warm-workers 1``): while one test's job trains, the next job's worker imports torch."""
    with daemon_in_tmp("--warm-workers", "1") as running:
        yield running


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def run_cli(
    *args: str,
    address: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> CliResult:
    """Runs the real ``cryptotune`` console script."""
    command = [str(BIN / "cryptotune")]
    if address:
        command += ["--address", address]
    command += list(args)
    completed = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A daemon on a fresh short state dir that the test kills and restarts; every process cleaned up."""
    from tests.helpers.harness import Harness  # it builds on this module's helpers

    root = short_tmp_dir()
    running = Harness(root)
    try:
        yield running
    finally:
        running.close()
        shutil.rmtree(root, ignore_errors=True)
