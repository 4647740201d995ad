"""Training jobs through the real daemon, the real CLI and the SDK (builtin:tiny-qwen3 on the CPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cryptotune.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from tests.helpers.jobs import wait_terminal, write_config, write_data
from tests.integration.conftest import RunningDaemon, run_cli

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "client" / "cryptotune" / "examples" / "crypto_qa_zh.jsonl"
STAGES = ["init", "data_prep", "config_gen", "env_setup", "training", "evaluation", "complete"]


def steps_of(events: list[dict[str, object]]) -> list[int]:
    return [int(e["data"]["step"]) for e in events if e["type"] == "progress"]  # type: ignore[index,call-overload]


def test_full_job_through_the_cli(warm_daemon: RunningDaemon, tmp_path: Path) -> None:
    daemon = warm_daemon
    data = write_data(tmp_path / "data.jsonl")
    config = write_config(tmp_path / "config.yaml", epochs=2)
    out = tmp_path / "out"
    result = run_cli(
        "--json",
        "train",
        str(data),
        str(config),
        "--output-dir",
        str(out),
        "--pipeline-id",
        "full-1",
        address=daemon.address,
        timeout=900,
    )
    assert result.exit_code == 0, result.stdout + result.stderr + daemon.log()
    status = json.loads(result.stdout)
    assert status["state"] == "succeeded"
    assert [s["name"] for s in status["stages"]] == STAGES
    assert all(s["state"] == "done" for s in status["stages"])

    report = json.loads((out / "report.json").read_text())
    for key in (
        "pipeline_id",
        "model",
        "train_samples",
        "eval_samples",
        "steps",
        "train_loss_first",
        "train_loss_last",
        "eval_loss",
        "eval_loss_by_difficulty",
        "thinking_format_rate",
        "crypto_term_recall",
        "tokens_per_second",
        "peak_memory_mb",
        "stage_seconds",
        "wall_seconds",
        "adapter_path",
        "resumed_from_step",
    ):
        assert key in report, key
    assert report["train_loss_last"] < report["train_loss_first"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "report.md").is_file() and (out / "loss_curve.png").is_file()
    assert (out / "resolved_config.yaml").is_file()

    events = [
        json.loads(line)
        for line in run_cli("--json", "watch", "full-1", address=daemon.address).stdout.splitlines()
    ]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "events must be gap-free from 1"
    started = [e["data"]["stage"] for e in events if e["type"] == "stage_started"]
    assert started == STAGES
    steps = steps_of(events)
    assert steps == sorted(steps) and steps[-1] == report["steps"]

    since = seqs[len(seqs) // 2]
    tail = [
        json.loads(line)
        for line in run_cli(
            "--json", "watch", "full-1", "--since", str(since), address=daemon.address
        ).stdout.splitlines()
    ]
    assert [e["seq"] for e in tail] == seqs[since:]

    listed = run_cli("--json", "jobs", address=daemon.address).json()
    assert isinstance(listed, dict)
    assert listed["jobs"][0]["pipeline_id"] == "full-1"
    by_dir = run_cli("--json", "status", str(out), address=daemon.address).json()
    assert isinstance(by_dir, dict)
    assert by_dir["job_id"] == status["job_id"]

    exported = tmp_path / "exported"
    assert run_cli("export", "full-1", str(exported), address=daemon.address).exit_code == 0
    assert (exported / "adapter" / "adapter_config.json").is_file()
    assert json.loads((exported / "report.json").read_text()) == report
    logs = run_cli("logs", "full-1", address=daemon.address)
    assert logs.exit_code == 0

    again = run_cli(
        "train",
        str(data),
        str(config),
        "-o",
        str(tmp_path / "o2"),
        "--pipeline-id",
        "full-1",
        address=daemon.address,
    )
    assert again.exit_code == 1 and "already used" in again.stderr


def test_dry_run_plans_and_trains_nothing(warm_daemon: RunningDaemon, tmp_path: Path) -> None:
    daemon = warm_daemon
    data = write_data(tmp_path / "data.jsonl", count=12)
    config = write_config(tmp_path / "config.yaml")
    out = tmp_path / "out"
    result = run_cli(
        "--json",
        "train",
        str(data),
        str(config),
        "-o",
        str(out),
        "--dry-run",
        address=daemon.address,
        timeout=600,
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    plan = status["plan"]
    for key in (
        "train_samples",
        "eval_samples",
        "steps",
        "micro_batch_size",
        "precision",
        "memory_estimate_mb",
    ):
        assert key in plan, key
    assert plan["train_samples"] == 9 and plan["precision"] == "fp32"
    states = {s["name"]: s["state"] for s in status["stages"]}
    assert states["config_gen"] == "done" and states["training"] == "pending"
    assert not (out / "adapter").exists()


def test_overlong_samples_are_refused_with_the_records(warm_daemon: RunningDaemon, tmp_path: Path) -> None:
    daemon = warm_daemon
    data = write_data(tmp_path / "data.jsonl", count=8)
    config = write_config(tmp_path / "config.yaml", max_seq_length=64)
    result = run_cli(
        "--json",
        "train",
        str(data),
        str(config),
        "-o",
        str(tmp_path / "out"),
        address=daemon.address,
        timeout=600,
    )
    assert result.exit_code == 1
    status = json.loads(result.stdout)
    assert status["state"] == "failed"
    assert "max_seq_length" in status["failure_reason"]
    assert "line" in status["failure_reason"]


def test_submit_errors_map_to_typed_exceptions(warm_daemon: RunningDaemon, tmp_path: Path) -> None:
    daemon = warm_daemon
    data = write_data(tmp_path / "data.jsonl", count=4)
    config = write_config(tmp_path / "config.yaml")
    with daemon.client() as client:
        with pytest.raises(NotFound):
            client.get_job("no-such-job")
        with pytest.raises(PermissionDenied):
            client.submit(data, config, output_dir="/proc/nope")
        with pytest.raises(InvalidArgument):
            client.submit(data, config, output_dir=tmp_path / "o", pipeline_id="bad/id")
        with pytest.raises(InvalidArgument):
            client.submit(data, "training:\n  learning_rate: -1\n", output_dir=tmp_path / "o")
        remote = "model:\n  trust_remote_code: true\n"
        with pytest.raises(PermissionDenied):
            client.submit(data, remote, output_dir=tmp_path / "o")
        first = client.submit(
            data, config, output_dir=tmp_path / "o", pipeline_id="dup", dry_run=True, request_id="req-1"
        )
        same = client.submit(
            data, config, output_dir=tmp_path / "o", pipeline_id="dup", dry_run=True, request_id="req-1"
        )
        assert same.job_id == first.job_id
        with pytest.raises((AlreadyExists, FailedPrecondition)):
            client.submit(data, config, output_dir=tmp_path / "o3", pipeline_id="dup", dry_run=True)
        wait_terminal(client, first.job_id)


@pytest.mark.slow
def test_cancel_then_resume_continues_without_repeating_steps(daemon: RunningDaemon, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", count=24)
    config = write_config(tmp_path / "config.yaml", epochs=8, save_steps=3)
    out = tmp_path / "out"
    with daemon.client() as client:
        job = client.submit(data, config, output_dir=out, pipeline_id="resumable")
        checkpoint_step = 0
        for event in client.watch(job.job_id):
            if event.type == "checkpoint":
                checkpoint_step = int(event.data["step"])
            if (
                checkpoint_step
                and event.type == "progress"
                and int(event.data["step"]) >= checkpoint_step + 2
            ):
                break
        cancelled = run_cli("cancel", "resumable", address=daemon.address)
        assert cancelled.exit_code == 0
        assert wait_terminal(client, job.job_id) == "cancelled"
        first_events = list(client.watch(job.job_id))
        total = max(int(e.data["total_steps"]) for e in first_events if e.type == "progress")
        saved = [int(e.data["step"]) for e in first_events if e.type == "checkpoint"]

        resumed = client.submit(data, config, resume="resumable")
        assert resumed.pipeline_id == "resumable" and resumed.job_id != job.job_id
        assert wait_terminal(client, resumed.job_id) == "succeeded", client.get_job(
            resumed.job_id
        ).failure_reason
        second_events = list(client.watch(resumed.job_id))
        steps = [int(e.data["step"]) for e in second_events if e.type == "progress"]
        assert steps[0] == max(saved) + 1
        assert steps == list(range(steps[0], total + 1)), "no repeated or skipped steps"
        report = json.loads((out / "report.json").read_text())
        assert report["resumed_from_step"] == max(saved)
        assert report["steps"] == total


@pytest.mark.slow
def test_resume_with_changed_data_is_refused(daemon: RunningDaemon, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", count=16)
    config = write_config(tmp_path / "config.yaml", max_steps=4, save_steps=2)
    with daemon.client() as client:
        job = client.submit(data, config, output_dir=tmp_path / "out", pipeline_id="changing")
        assert wait_terminal(client, job.job_id) == "succeeded"
        changed = write_data(tmp_path / "other.jsonl", count=20)
        try:
            resumed = client.submit(changed, config, resume="changing@2")
        except FailedPrecondition as error:
            assert "data" in error.message
            return
        assert wait_terminal(client, resumed.job_id) == "failed"
        assert "data" in client.get_job(resumed.job_id).failure_reason


@pytest.mark.slow
def test_two_process_ddp_job_on_cpu(daemon: RunningDaemon, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", count=16)
    config = write_config(tmp_path / "config.yaml", max_steps=4, save_steps=2, world_size=2)
    with daemon.client() as client:
        job = client.submit(data, config, output_dir=tmp_path / "out", pipeline_id="ddp")
        state = wait_terminal(client, job.job_id, timeout=900)
        assert state == "succeeded", (
            client.get_job(job.job_id).failure_reason + "\n" + "\n".join(client.logs(job.job_id))
        )
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["world_size"] == 2
        assert report["steps"] == 4


@pytest.mark.slow
def test_dry_run_plan_table_and_resume_output_dir_warning(daemon: RunningDaemon, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", count=12)
    config = write_config(tmp_path / "config.yaml")
    out = tmp_path / "out"
    planned = run_cli(
        "train",
        str(data),
        str(config),
        "-o",
        str(out),
        "--pipeline-id",
        "planned",
        "--dry-run",
        address=daemon.address,
        timeout=600,
    )
    assert planned.exit_code == 0, planned.stdout + planned.stderr
    rows = dict(re.findall(r"│ ([a-z ]+?) +│ (\S+) +│", planned.stdout))
    assert rows["gradient checkpointing"] == "off", planned.stdout
    assert rows["packing"] == "on", planned.stdout
    assert rows["train samples"] == "9"

    other = tmp_path / "other"
    resumed = run_cli(
        "train",
        str(data),
        str(config),
        "--resume",
        "planned",
        "-o",
        str(other),
        "--dry-run",
        address=daemon.address,
        timeout=600,
    )
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    warning = " ".join(resumed.stderr.split())
    assert "warning:" in warning and f"--output-dir {other} is ignored" in warning
    assert str(out) in warning
    status = run_cli("--json", "status", "planned", address=daemon.address).json()
    assert isinstance(status, dict)
    assert status["resumed_from"] == "planned" and status["output_dir"] == str(out)
    assert not other.exists()

    same = run_cli(
        "train",
        str(data),
        str(config),
        "--resume",
        "planned",
        "-o",
        str(out),
        "--dry-run",
        "--detach",
        address=daemon.address,
        timeout=600,
    )
    assert same.exit_code == 0, same.stdout + same.stderr
    assert "warning" not in same.stderr
    with daemon.client() as client:
        assert wait_terminal(client, "planned") == "succeeded"
