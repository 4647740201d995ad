"""``--json`` through the real CLI: after any subcommand, on Ctrl-C while following, and for logs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from cryptotune import Client
from cryptotune.errors import NotFound
from cryptotune.types import Job
from tests.helpers.jobs import wait_terminal, write_config, write_data
from tests.integration.conftest import BIN, RunningDaemon, run_cli


def test_json_is_accepted_after_every_subcommand(daemon: RunningDaemon, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml")
    checked = run_cli("validate-config", "--json", str(config), address=daemon.address)
    assert checked.exit_code == 0, checked.stdout + checked.stderr
    report = checked.json()
    assert isinstance(report, dict) and report["valid"] is True and report["errors"] == []
    assert {w["path"] for w in report["warnings"]} >= {"training.learning_rate"}

    gpus = run_cli("list-gpus", "--json", address=daemon.address)
    assert gpus.exit_code == 0, gpus.stderr
    payload = gpus.json()
    assert isinstance(payload, dict) and payload["gpus"] == []

    assert run_cli("status", "--json", address=daemon.address).json() == {"jobs": []}
    assert run_cli("jobs", "--json", address=daemon.address).json() == {"jobs": []}

    missing = run_cli("status", "no-such-job", "--json", address=daemon.address)
    assert missing.exit_code == 1
    error = missing.json()
    assert isinstance(error, dict) and "no-such-job" in error["error"]["message"]

    for command in ("validate-config", "list-gpus", "inspect-data", "train", "status", "watch", "logs"):
        shown = run_cli(command, "--help", address=daemon.address)
        assert shown.exit_code == 0 and "--json" in shown.stdout, command


def _start_cli(address: str, *args: str) -> subprocess.Popen[bytes]:
    """The real CLI as a child that Ctrl-C (SIGINT) reaches even when this test runs in the background.

    Unbuffered binary pipes: a buffered readline() would also pull in later lines, which
    communicate() (reading the pipe itself) then never sees.
    """
    return subprocess.Popen(
        [str(BIN / "cryptotune"), "--address", address, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads here
    )


def _wait_training(
    client: Client, daemon: RunningDaemon, pipeline: str, cli: subprocess.Popen[bytes], timeout: float = 300
) -> None:
    """Waits for the job's first step; fails at once, saying why, when the job or the CLI ends first."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        try:
            job = client.get_job(pipeline)
        except NotFound:  # not submitted yet
            job = None
        if job is not None and job.progress.step >= 1:
            return
        if (job is not None and job.terminal) or cli.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(_why_not_training(daemon, pipeline, job, cli))


def _why_not_training(
    daemon: RunningDaemon, pipeline: str, job: Job | None, cli: subprocess.Popen[bytes]
) -> str:
    """What a failed wait shows: the job's state, the CLI's exit, the daemon's and the worker's logs."""
    lines = [f"{pipeline} did not reach step 1"]
    if job is None:
        lines.append("the job was never submitted")
    else:
        lines.append(f"job {job.job_id}: {job.state.value}, stage {job.stage}, reason {job.failure_reason!r}")
        worker_log = daemon.state_dir / "jobs" / job.job_id / "worker.log"
        if worker_log.exists():
            lines.append("worker log (tail):\n" + worker_log.read_text(errors="replace")[-4000:])
    if cli.poll() is not None:
        out, err = cli.communicate()
        lines.append(
            f"the CLI exited {cli.returncode}: {out.decode(errors='replace')}{err.decode(errors='replace')}"
        )
    lines.append("daemon log (tail):\n" + daemon.log_path.read_text(errors="replace")[-4000:])
    return "\n".join(lines)


def test_ctrl_c_detaches_json_train_and_watch(daemon: RunningDaemon, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", count=12)
    config = write_config(tmp_path / "config.yaml", epochs=200, save_steps=1000)
    with daemon.client() as client:
        train = _start_cli(
            daemon.address,
            "--json",
            "train",
            str(data),
            str(config),
            "-o",
            str(tmp_path / "out"),
            "--pipeline-id",
            "ctrlc",
        )
        try:
            _wait_training(client, daemon, "ctrlc", train)
            train.send_signal(signal.SIGINT)
            stdout, stderr = (b.decode() for b in train.communicate(timeout=60))
        finally:
            train.kill()
        assert train.returncode == 0, stdout + stderr
        assert "Aborted" not in stderr
        detached = json.loads(stdout)
        job = client.get_job("ctrlc")
        assert detached["detached"] is True
        assert detached["job_id"] == job.job_id and detached["pipeline_id"] == "ctrlc"
        assert detached["reattach"].startswith("cryptotune watch ctrlc --since ")
        assert int(detached["reattach"].rsplit(" ", 1)[1]) > 0
        assert job.state == "running", "detaching must not cancel the job"

        watch = _start_cli(daemon.address, "watch", "--json", "ctrlc")
        try:
            assert watch.stdout is not None
            first = json.loads(watch.stdout.readline())
            assert first["seq"] == 1
            time.sleep(1.0)
            watch.send_signal(signal.SIGINT)
            rest, stderr = (b.decode() for b in watch.communicate(timeout=60))
        finally:
            watch.kill()
        assert watch.returncode == 0, stderr
        lines = [first, *(json.loads(line) for line in rest.splitlines())]
        last = lines[-1]
        assert last["detached"] is True and last["job_id"] == job.job_id
        assert last["reattach"] == f"cryptotune watch ctrlc --since {lines[-2]['seq']}"
        assert all("seq" in line for line in lines[:-1])
        assert client.get_job("ctrlc").state == "running"
        client.cancel("ctrlc")
        assert wait_terminal(client, "ctrlc") == "cancelled"


def test_logs_json_one_document_or_one_object_per_line(daemon: RunningDaemon, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", count=8)
    config = write_config(tmp_path / "config.yaml")
    planned = run_cli(
        "--json",
        "train",
        str(data),
        str(config),
        "-o",
        str(tmp_path / "out"),
        "--pipeline-id",
        "logged",
        "--dry-run",
        address=daemon.address,
        timeout=600,
    )
    assert planned.exit_code == 0, planned.stdout + planned.stderr
    job_id = json.loads(planned.stdout)["job_id"]

    raw = run_cli("logs", "logged", address=daemon.address)
    assert raw.exit_code == 0 and raw.stdout.strip(), raw.stderr
    lines = raw.stdout.splitlines()

    document = run_cli("--json", "logs", "logged", address=daemon.address)
    assert document.exit_code == 0, document.stderr
    assert document.json() == {"job_id": job_id, "lines": lines}
    assert run_cli("logs", "logged", "--json", address=daemon.address).json() == document.json()

    followed = run_cli("--json", "logs", "logged", "-f", address=daemon.address)
    assert followed.exit_code == 0, followed.stderr
    assert [json.loads(line) for line in followed.stdout.splitlines()] == [{"line": line} for line in lines]
