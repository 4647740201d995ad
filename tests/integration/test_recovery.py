"""Crash recovery with a real daemon: kill -9, workers that outlive it, dead workers, crashes while a
checkpoint is written, watchers that reconnect, SIGTERM (see docs/reliability.md)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from cryptotune.errors import CryptotuneError, DaemonUnavailable
from cryptotune_daemon.jobs import worker_process as wp
from cryptotune_daemon.jobs.supervisor import RETRY_BUDGET
from cryptotune_daemon.training.checkpoints import verify_checkpoint
from tests.helpers.harness import (
    WAIT_S,
    Event,
    Harness,
    alive,
    check_runs,
    checkpoints,
    describe,
    progress_max,
    states,
)
from tests.helpers.jobs import wait_terminal, write_config, write_data
from tests.integration.conftest import (
    BIN,
)

SEED = int(os.environ.get("CRYPTOTUNE_TEST_SEED", "20240611"))


def worker_event_runs(events: list[Event]) -> list[list[Event]]:
    """The worker's events (everything but state changes) of each run, a run beginning at each RUNNING."""
    runs: list[list[Event]] = []
    for event in events:
        if event.type == "state":
            if event.data["state"] == "running":
                runs.append([])
        else:
            assert runs, f"a worker event before the job ran: {event}"
            runs[-1].append(event)
    return runs


def job_files(root: Path, *, steps: int, save_steps: int, records: int = 24) -> tuple[Path, Path]:
    return (
        write_data(root / "data.jsonl", count=records),
        write_config(root / "config.yaml", max_steps=steps, save_steps=save_steps),
    )


def report_of(out: Path) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    assert isinstance(report, dict)
    return report


def same_process(pid: int, started_at: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started_at) < 2 and alive(proc)
    except psutil.Error:
        return False


# -- 1. kill -9 at random moments -------------------------------------------------------------------


@pytest.mark.slow
def test_repeated_kill_9_of_the_daemon_loses_and_repeats_nothing(harness: Harness) -> None:
    """Seeded kill -9 of the daemon at random moments; once the crash takes the worker too."""
    rng = random.Random(SEED)
    total, save = 12, 2
    data, config = job_files(harness.root, steps=total, save_steps=save)
    out = harness.root / "out"
    harness.start()
    with harness.client() as client:
        job = client.submit(data, config, output_dir=out, pipeline_id="kill9", request_id="kill9-request")

    # Killed right after acknowledging the job (queued or being launched): it must survive.
    harness.kill9()
    assert harness.job_row(job.job_id)["state"] in ("queued", "running")
    seen = harness.start_observing_health(("reconcile_delay_s=1.5",))
    assert seen[0] == "NOT_SERVING" and seen[-1] == "SERVING", f"health during reconciliation: {seen}"

    killed_workers = 0
    for round_ in range(3):
        time.sleep(rng.uniform(1.0, 6.0))
        harness.kill9()
        if round_ == 1:
            # A crash that takes the workers with it (power cut, OOM of the whole unit): resume.
            killed_workers = harness.kill_job(job.job_id)
        harness.start()

    with harness.client() as client:
        assert wait_terminal(client, job.job_id, timeout=WAIT_S) == "succeeded", (
            client.get_job(job.job_id).failure_reason + harness.log()[-3000:]
        )
        again = client.submit(data, config, output_dir=out, pipeline_id="kill9", request_id="kill9-request")
        assert again.job_id == job.job_id, "a retried submit must return the acknowledged job"
        assert [j.job_id for j in client.list_jobs() if j.pipeline_id == "kill9"] == [job.job_id]
    events = harness.events(job.job_id)
    runs = check_runs(events, total, save)
    assert report_of(out)["steps"] == total
    # Each run that reached the worker opens with exactly one init stage (started or restored); a
    # run may be empty when the daemon died between marking the job running and launching it.
    worker_runs = [run for run in worker_event_runs(events) if run]
    assert len(worker_runs) >= len([run for run in runs if run]), describe(events)
    for run in worker_runs:
        inits = [e for e in run if e.type in ("stage_started", "stage_skipped") and e.data["stage"] == "init"]
        assert run[0] in inits and len(inits) == 1, describe(events)
    # Daemon restarts do not use up the retry budget; the one crash that took the worker does.
    assert harness.job_row(job.job_id)["retries"] == (1 if killed_workers else 0), (
        f"{killed_workers} worker process(es) killed\n{describe(events)}\n{harness.log()[-6000:]}"
    )


# -- 2 and 5. workers outlive a daemon crash and are reattached; watchers resume with after_seq --------


class Follower(threading.Thread):
    """A client that follows a job and, when a daemon restart cuts its stream, watches again from the
    last seq it has (as ``cryptotune watch --since`` does)."""

    def __init__(self, harness: Harness, job_id: str) -> None:
        super().__init__(daemon=True)
        self.harness, self.job_id = harness, job_id
        self.seqs: list[int] = []
        self.last_state = ""
        self.resumed_streams = 0  # streams opened with after_seq > 0 that delivered events
        self.log: list[str] = []

    def wait_caught_up(self) -> None:
        """Until this follower has every event stored so far (its stream is live again)."""
        deadline = time.monotonic() + 30
        while not self.seqs or self.seqs[-1] < self.harness.events(self.job_id)[-1].seq:
            assert time.monotonic() < deadline, f"the follower lags: {self.log}"
            time.sleep(0.05)

    def run(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            after = self.seqs[-1] if self.seqs else 0
            try:
                with self.harness.client() as client:
                    for event in client.watch(self.job_id, after_seq=after):
                        if after and event.seq == after + 1:
                            self.resumed_streams += 1
                        self.seqs.append(event.seq)
                        if event.type == "state":
                            self.last_state = str(event.data["state"])
                if self.last_state in ("succeeded", "failed", "cancelled"):
                    return  # the stream ended with the job
                self.log.append(f"after {after}: the stream ended before the job did")
                time.sleep(0.2)
            except CryptotuneError as error:  # cut by the crash, or nothing listens yet
                self.log.append(f"after {after}: {type(error).__name__}")
                time.sleep(0.2)


@pytest.mark.slow
def test_a_crashed_daemon_reattaches_to_its_live_worker_and_watchers_resume(harness: Harness) -> None:
    total, save = 8, 4
    data, config = job_files(harness.root, steps=total, save_steps=save)
    harness.start()
    with harness.client() as client:
        job = client.submit(data, config, output_dir=harness.root / "out", pipeline_id="reattach")
    follower = Follower(harness, job.job_id)
    follower.start()
    harness.wait_events(job.job_id, lambda evs: progress_max(evs) >= 2, "step 2")
    row = harness.job_row(job.job_id)
    pid, started_at = int(row["worker_pid"]), float(row["worker_started_at"])

    follower.wait_caught_up()
    harness.kill9()
    assert same_process(pid, started_at), "the worker must outlive the daemon"
    time.sleep(1.5)  # it keeps training and writing events while no daemon runs
    harness.start()
    assert harness.job_row(job.job_id)["worker_pid"] == pid
    harness.wait_events(job.job_id, lambda evs: progress_max(evs) >= 5, "step 5")
    follower.wait_caught_up()

    # Again, as if the daemon had died between starting the worker and storing its pid: the job
    # lock and worker.pids still lead the new daemon to it, and it must not start a second one.
    harness.kill9()
    harness.forget_worker_in_db(job.job_id)
    harness.start()
    assert harness.job_row(job.job_id)["worker_pid"] == pid

    with harness.client() as client:
        assert wait_terminal(client, job.job_id, timeout=WAIT_S) == "succeeded"
    events = harness.events(job.job_id)
    runs = check_runs(events, total, save)
    assert runs == [list(range(1, total + 1))], "one uninterrupted run"
    assert "recovering" not in states(events)
    leaders = [h.pid for h, role in wp._recorded(harness.job_dir(job.job_id)) if role == "leader"]
    assert leaders == [pid], "exactly one worker was ever started"
    assert not same_process(pid, started_at)
    assert harness.job_row(job.job_id)["retries"] == 0

    # Both crashes cut the follower's stream; resuming after its last seq lost and repeated nothing.
    follower.join(timeout=30)
    assert not follower.is_alive()
    assert follower.resumed_streams == 2, follower.log
    assert not [line for line in follower.log if "ended before" in line], follower.log
    assert follower.seqs == [e.seq for e in events], "exactly the stored events, each once"
    assert follower.last_state == "succeeded"


# -- 3. a dead worker is resumed from its newest checkpoint, within a budget ---------------------------


def start_and_read_a_line(command: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """Starts a CLI and returns it with its first line of output.

    Unbuffered binary pipes: a buffered readline() would also pull in the lines after the first,
    which communicate() (reading the pipe itself) then never sees.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert process.stdout is not None
    return process, process.stdout.readline().decode("utf-8")


def finish(process: subprocess.Popen[bytes]) -> tuple[str, str]:
    """The rest of the CLI's stdout and its stderr, once it exits."""
    out, err = process.communicate(timeout=WAIT_S)
    return out.decode("utf-8"), err.decode("utf-8")


@pytest.mark.slow
def test_cli_watch_rides_out_a_daemon_crash_and_misses_no_event(harness: Harness) -> None:
    total, save = 8, 2
    data, config = job_files(harness.root, steps=total, save_steps=save)
    harness.start()
    with harness.client() as client:
        job = client.submit(data, config, output_dir=harness.root / "out", pipeline_id="ride")
    harness.wait_events(job.job_id, lambda evs: progress_max(evs) >= 1, "step 1")
    command = [str(BIN / "cryptotune"), "--address", harness.address, "--no-autostart", "--json"]
    watcher, line = start_and_read_a_line([*command, "watch", job.job_id])
    first = json.loads(line)  # connected: the stored events are arriving
    assert first["seq"] == 1
    harness.kill9()
    time.sleep(1.0)
    harness.start()
    rest, err = finish(watcher)
    assert watcher.returncode == 0, err
    received = [first, *(json.loads(line) for line in rest.splitlines())]
    assert [e["seq"] for e in received] == [e.seq for e in harness.events(job.job_id)], (
        f"each event once: {[e['seq'] for e in received]} {err}"
    )
    assert received[-1]["type"] == "state" and received[-1]["data"]["state"] == "succeeded"
    assert "The daemon went away" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_logs_follow_rides_out_a_daemon_crash_without_repeating_lines(harness: Harness) -> None:
    data, config = job_files(harness.root, steps=8, save_steps=2)
    harness.start()
    with harness.client() as client:
        job = client.submit(data, config, output_dir=harness.root / "out", pipeline_id="logs-ride")
    harness.wait_events(job.job_id, lambda evs: progress_max(evs) >= 1, "step 1")
    command = [str(BIN / "cryptotune"), "--address", harness.address, "--no-autostart"]
    follower, first = start_and_read_a_line([*command, "logs", job.job_id, "-f"])  # the log streams
    harness.kill9()
    time.sleep(1.0)
    harness.start()
    rest, err = finish(follower)
    assert follower.returncode == 0, err
    with harness.client() as client:
        assert wait_terminal(client, job.job_id, timeout=WAIT_S) == "succeeded"
        stored = list(client.logs(job.job_id))
        assert len(stored) >= 2 and list(client.logs(job.job_id, skip_lines=1)) == stored[1:]
    received = (first + rest).splitlines()
    assert received == stored, f"every line once, in order: {received} vs {stored}"
    assert "The daemon went away" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_killed_worker_is_resumed_from_its_newest_checkpoint(harness: Harness) -> None:
    total, save = 6, 2
    data, config = job_files(harness.root, steps=total, save_steps=save)
    out = harness.root / "out"
    harness.start()
    with harness.client() as client:
        job = client.submit(data, config, output_dir=out, pipeline_id="killed-worker")
    before = harness.wait_events(
        job.job_id,
        lambda evs: bool(checkpoints(evs)) and max(checkpoints(evs)) >= 4 and progress_max(evs) > 4,
        "a checkpoint at step 4 and a step after it",
    )
    victims = harness.processes(job.job_id)
    assert victims
    os.killpg(int(harness.job_row(job.job_id)["worker_pid"]), signal.SIGKILL)

    with harness.client() as client:
        assert wait_terminal(client, job.job_id, timeout=WAIT_S) == "succeeded", client.get_job(
            job.job_id
        ).failure_reason
    assert not any(alive(p) for p in victims)
    events = harness.events(job.job_id)
    lost = [e for e in events if e.type == "state" and e.data["state"] == "recovering"]
    assert len(lost) == 1 and "SIGKILL" in lost[0].data["reason"], describe(events)
    assert states(events)[-4:] == ["recovering", "queued", "running", "succeeded"]
    runs = check_runs(events, total, save)
    resumed = [run for run in runs if run][-1][0] - 1
    assert resumed >= max(checkpoints(before)), "resumed from an older checkpoint than the newest"
    assert report_of(out)["resumed_from_step"] == resumed
    assert harness.job_row(job.job_id)["retries"] == 1


def test_a_worker_lost_more_often_than_the_budget_fails_with_a_reason(harness: Harness) -> None:
    data, config = job_files(harness.root, steps=4, save_steps=2, records=8)
    harness.start()
    with harness.client() as client:
        job = client.submit(data, config, output_dir=harness.root / "out", pipeline_id="doomed")
        killed: list[int] = []
        deadline = time.monotonic() + WAIT_S
        while not client.get_job(job.job_id).terminal:
            assert time.monotonic() < deadline, f"still {client.get_job(job.job_id).state}"
            pid = harness.job_row(job.job_id)["worker_pid"]
            if pid and pid not in killed:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            time.sleep(0.1)
        final = client.get_job(job.job_id)
    assert final.state == "failed"
    assert f"lost {RETRY_BUDGET + 1} times" in final.failure_reason, final.failure_reason
    assert "SIGKILL" in final.failure_reason
    assert len(killed) == RETRY_BUDGET + 1
    assert states(harness.events(job.job_id)).count("recovering") == RETRY_BUDGET + 1


# -- 4. a crash while a checkpoint is written ---------------------------------------------------------


@pytest.mark.slow
def test_a_crash_while_writing_a_checkpoint_resumes_from_the_previous_one(harness: Harness) -> None:
    total, save = 4, 2
    data, config = job_files(harness.root, steps=total, save_steps=save)
    out = harness.root / "out"
    harness.start(faults=("crash_in_checkpoint=4",))  # the worker SIGKILLs itself halfway through step 4's
    with harness.client() as client:
        job = client.submit(data, config, output_dir=out, pipeline_id="torn-checkpoint")
        assert wait_terminal(client, job.job_id, timeout=WAIT_S) == "succeeded", client.get_job(
            job.job_id
        ).failure_reason
    partial = Path((out / ".test-crashed-in-checkpoint-4").read_text())
    assert partial.name.startswith(".tmp-step-000004"), "the crash happened inside the checkpoint write"
    events = harness.events(job.job_id)
    lost = next(e.seq for e in events if e.type == "state" and e.data["state"] == "recovering")
    assert checkpoints(events[:lost]) == [2], "step 4's checkpoint was never completed"
    assert checkpoints(events[lost:]) == [4]
    runs = [run for run in check_runs(events, total, save) if run]
    assert runs == [[1, 2, 3, 4], [3, 4]]
    assert report_of(out)["resumed_from_step"] == 2
    root = out / "checkpoints"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")], "leftovers were cleaned"
    assert all(verify_checkpoint(p)[0] is not None for p in root.iterdir())


# -- 7. SIGTERM -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_the_daemon_promptly_and_loses_no_job(harness: Harness) -> None:
    total, save = 10, 2
    data, config = job_files(harness.root, steps=total, save_steps=save)
    out = harness.root / "out"
    harness.start()
    with harness.client() as client:
        job = client.submit(data, config, output_dir=out, pipeline_id="sigterm")
    harness.wait_events(job.job_id, lambda evs: progress_max(evs) >= 2, "step 2")
    row = harness.job_row(job.job_id)
    pid, started_at = int(row["worker_pid"]), float(row["worker_started_at"])

    # A follower is connected: it must not hold the shutdown up.
    ended: list[BaseException] = []

    def follow() -> None:
        with harness.client() as client:
            try:
                for _ in client.watch(job.job_id):
                    pass
            except CryptotuneError as error:
                ended.append(error)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.5)
    refused: list[BaseException] = []

    def submit_during_shutdown() -> None:
        with harness.client() as client:
            try:
                client.submit(data, config, output_dir=harness.root / "late", pipeline_id="late")
            except CryptotuneError as error:
                refused.append(error)

    code = harness.sigterm(timeout=60, during=submit_during_shutdown)
    assert code == 0
    follower.join(timeout=5)
    assert ended and not follower.is_alive()
    assert isinstance(ended[0], DaemonUnavailable) and "shutting down" in ended[0].message, ended
    assert refused, "a submission during shutdown must be refused"
    assert same_process(pid, started_at), "outside systemd the worker keeps training"

    harness.start()
    assert harness.job_row(job.job_id)["worker_pid"] == pid, "reattached, not relaunched"
    harness.wait_events(job.job_id, lambda evs: progress_max(evs) >= 5, "step 5")

    # Under systemd, KillMode=mixed ends the workers once the daemon has exited: the job resumes.
    code = harness.sigterm(timeout=60)
    assert code == 0
    assert harness.kill_job(job.job_id) > 0
    harness.start()
    with harness.client() as client:
        assert wait_terminal(client, job.job_id, timeout=WAIT_S) == "succeeded"
        assert [j.pipeline_id for j in client.list_jobs()] == ["sigterm"]
    events = harness.events(job.job_id)
    runs = [run for run in check_runs(events, total, save) if run]
    assert len(runs) == 2
    assert report_of(out)["resumed_from_step"] == runs[1][0] - 1
    resumed = next(e for e in events if e.type == "state" and e.data["state"] == "queued" and e.seq > 1)
    assert "not counted" in resumed.data["reason"]
    assert harness.job_row(job.job_id)["retries"] == 0, "daemon restarts do not use the retry budget"


# -- the job lock ---------------------------------------------------------------------------------------


def test_the_job_lock_refuses_a_second_worker_until_every_process_is_gone(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    # A worker process that forks a child and dies: the child (a dataloader, say) still holds the lock.
    script = (
        "import os, time\n"
        "from cryptotune_daemon.worker.membership import join_job\n"
        "join_job()\n"
        "if os.fork() == 0:\n"
        "    time.sleep(120)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, wp.JOB_DIR_ENV: str(job_dir)}
    worker = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not wp.live_processes(job_dir):
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.05)
        assert wp.lock_held(job_dir) and wp.job_alive(job_dir, None)
        with pytest.raises(wp.WorkerStillRunning):
            wp.launch(job_dir / "spec.json", 1, job_dir / "worker.log", env, job_dir)
        assert not (job_dir / "worker.log").exists(), "nothing was started"

        worker.kill()
        worker.wait(timeout=10)
        assert wp.job_alive(job_dir, None), "the forked child still holds the job"
        with pytest.raises(wp.WorkerStillRunning):
            wp.launch(job_dir / "spec.json", 1, job_dir / "worker.log", env, job_dir)

        wp.signal_job(job_dir, None, signal.SIGKILL)  # finds the orphan by its environment
        deadline = time.monotonic() + 10
        while wp.job_alive(job_dir, None):
            assert time.monotonic() < deadline, "the orphan survived"
            time.sleep(0.05)
        assert not wp.lock_held(job_dir)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        wp.signal_job(job_dir, None, signal.SIGKILL)
