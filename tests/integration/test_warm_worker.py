"""Jobs started in a warm worker (``cryptotuned --warm-workers``) keep every promise of a cold one:
the job says it ran warm, a cancel ends its whole tree, a daemon kill -9 leaves it training and the
next daemon reattaches to it; an idle warm worker never outlives its daemon (docs/reliability.md)."""

from __future__ import annotations

import re
import time

import psutil
import pytest

from cryptotune_daemon.jobs import worker_process as wp
from tests.helpers.harness import WAIT_S, Event, Harness, alive, check_runs, progress_max, states
from tests.helpers.jobs import wait_terminal
from tests.integration.conftest import run_cli
from tests.integration.test_recovery import job_files, same_process

WARM = ("--warm-workers", "1")
_STARTED = re.compile(r"warm worker (\d+) started")


def warm_pids(harness: Harness) -> list[int]:
    """The warm workers the daemon(s) of this harness started, in order (from the daemon log)."""
    return [int(pid) for pid in _STARTED.findall(harness.log())]


def warm_line(events: list[Event]) -> str:
    """The job's event saying it ran in a warm worker ("" when it did not)."""
    lines = [str(e.data.get("message", "")) for e in events if e.type == "log"]
    return next((line for line in lines if "warm worker" in line), "")


def wait_gone(pid: int, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not alive(psutil.Process(pid)):
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} (pid {pid}) still runs")


@pytest.mark.slow
def test_a_warm_started_job_survives_a_daemon_kill_9_and_is_reattached(harness: Harness) -> None:
    total, save = 6, 3
    data, config = job_files(harness.root, steps=total, save_steps=save)
    harness.start(extra=WARM)
    first_warm = warm_pids(harness)
    assert len(first_warm) == 1, harness.log()
    with harness.client() as client:
        job = client.submit(data, config, output_dir=harness.root / "out", pipeline_id="warm")
    events = harness.wait_events(job.job_id, lambda evs: progress_max(evs) >= 1, "step 1")
    row = harness.job_row(job.job_id)
    pid, started_at = int(row["worker_pid"]), float(row["worker_started_at"])
    # The job ran in the warm worker the daemon had started, which says so in the job's events
    # and log, and the daemon started its replacement.
    assert pid == first_warm[0]
    assert f"warm worker (pid {pid}" in warm_line(events)
    assert "started in a warm worker" in (harness.job_dir(job.job_id) / "worker.log").read_text()
    replacement = warm_pids(harness)[1]
    job_dir = harness.job_dir(job.job_id)
    assert wp.lock_held(job_dir), "the handed-over job lock is held"
    assert pid in {h.pid for h in wp.live_processes(job_dir)}

    harness.kill9()
    # The job's worker outlives the daemon; the idle replacement ends with it.
    assert same_process(pid, started_at), "the warm-started worker must outlive the daemon"
    wait_gone(replacement, "the idle warm worker of a dead daemon")
    time.sleep(1.0)
    harness.start()  # a cold daemon (no warm workers) reattaches
    assert harness.job_row(job.job_id)["worker_pid"] == pid
    with harness.client() as client:
        assert wait_terminal(client, job.job_id, timeout=WAIT_S) == "succeeded"
    events = harness.events(job.job_id)
    assert check_runs(events, total, save) == [list(range(1, total + 1))], "one uninterrupted run"
    assert "recovering" not in states(events)
    leaders = [h.pid for h, role in wp._recorded(job_dir) if role == "leader"]
    assert leaders == [pid], "exactly one worker was ever started"
    assert harness.job_row(job.job_id)["retries"] == 0
    assert not wp.lock_held(job_dir)


@pytest.mark.slow
def test_cancel_of_a_warm_started_job_ends_its_tree(harness: Harness) -> None:
    data, config = job_files(harness.root, steps=500, save_steps=100)
    harness.start(extra=WARM)
    with harness.client() as client:
        job = client.submit(data, config, output_dir=harness.root / "out", pipeline_id="warm-cancel")
        events = harness.wait_events(job.job_id, lambda evs: progress_max(evs) >= 1, "step 1")
        assert warm_line(events), "the job ran in a warm worker"
        tree = harness.processes(job.job_id)
        pid = int(harness.job_row(job.job_id)["worker_pid"])
        assert pid in {p.pid for p in tree}
        result = run_cli("cancel", "warm-cancel", address=harness.address)
        assert result.exit_code == 0, result.stdout + result.stderr
        assert wait_terminal(client, job.job_id, timeout=WAIT_S) == "cancelled"
        assert [p.pid for p in tree if alive(p)] == [], "CANCELLED only once no process of the job remains"
        assert harness.processes(job.job_id) == []
        assert not wp.lock_held(harness.job_dir(job.job_id))
