"""The SDK's public names and typed states, and the job views the CLI renders from them."""

from __future__ import annotations

import io
import json

from rich.console import Console

import cryptotune
from cryptotune import JobState, StageState, _convert
from cryptotune.cli import render
from cryptotune.proto.v1 import job_pb2

PUBLIC_NAMES = [
    "AlreadyExists",
    "Client",
    "CryptotuneError",
    "DaemonUnavailable",
    "EventType",
    "FailedPrecondition",
    "InternalError",
    "InvalidArgument",
    "JobState",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StageState",
    "Unauthenticated",
    "Unimplemented",
]


def test_the_public_names_are_pinned_and_importable() -> None:
    assert cryptotune.__all__ == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(cryptotune, name) is not None, name


def test_only_succeeded_failed_and_cancelled_are_terminal() -> None:
    terminal = {state for state in JobState if state.is_terminal()}
    assert terminal == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    assert JobState.parse("recovering") is JobState.RECOVERING
    assert JobState.parse("from-a-newer-daemon") is JobState.UNKNOWN


def _job(state: int, **fields: object) -> job_pb2.Job:
    message = job_pb2.Job(job_id="job-1", pipeline_id="aes-v1", state=state, output_dir="/out", **fields)  # type: ignore[arg-type]
    message.stages.add(name="init", state="done", seconds=1.5)
    message.stages.add(name="data_prep", state="running")
    return message


def test_jobs_from_the_wire_carry_enum_states_and_print_lower_case_names() -> None:
    job = _convert.job(_job(job_pb2.JOB_STATE_RUNNING))
    assert job.state is JobState.RUNNING and not job.terminal
    assert [s.state for s in job.stages] == [StageState.DONE, StageState.RUNNING]
    printed = json.loads(json.dumps(job.status_dict()))
    assert printed["state"] == "running"
    assert printed["stages"] == [{"name": "init", "state": "done"}, {"name": "data_prep", "state": "running"}]
    assert _convert.job(_job(job_pb2.JOB_STATE_UNSPECIFIED)).state is JobState.UNKNOWN
    assert _convert.job(_job(job_pb2.JOB_STATE_CANCELLED)).terminal


def _rendered(draw: object) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    draw(console)  # type: ignore[operator]
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_a_failed_job_renders_its_reason_and_where_its_logs_are() -> None:
    job = _convert.job(_job(job_pb2.JOB_STATE_FAILED, failure_reason="data_prep: line 7 is not JSON"))
    text = _rendered(lambda console: render.outcome(console, job))
    assert "pipeline aes-v1 failed: data_prep: line 7 is not JSON" in text
    assert "cryptotune logs job-1" in text
    detail = _rendered(lambda console: render.job_detail(console, job))
    assert "init:done  data_prep:running" in detail and "failed" in detail
    table = _rendered(lambda console: console.print(render.jobs_table([job])))
    assert "aes-v1" in table and "failed" in table


def test_a_queued_job_shows_what_it_waits_for() -> None:
    message = "waiting for 2 nodes × 4 GPUs; the cluster has 1 node free"
    job = _convert.job(_job(job_pb2.JOB_STATE_QUEUED, waiting_for=message))
    assert job.waiting_for == message and job.status_dict()["waiting_for"] == message
    detail = _rendered(lambda console: render.job_detail(console, job))
    rows = [
        [cell.strip() for cell in line.strip("│").split("│")] for line in detail.splitlines() if "│" in line
    ]
    assert ["waiting", message] in rows
    running = _convert.job(_job(job_pb2.JOB_STATE_RUNNING))
    assert running.status_dict()["waiting_for"] == ""
    assert "waiting" not in _rendered(lambda console: render.job_detail(console, running))


def test_a_succeeded_job_renders_its_outputs_or_its_plan() -> None:
    job = _convert.job(_job(job_pb2.JOB_STATE_SUCCEEDED))
    text = _rendered(lambda console: render.outcome(console, job))
    assert "pipeline aes-v1 succeeded" in text and "/out/adapter" in text and "/out/report.md" in text
    plan = '{"steps": 1200, "packing": true}'
    dry = _convert.job(_job(job_pb2.JOB_STATE_SUCCEEDED, dry_run=True, plan_json=plan))
    text = _rendered(lambda console: render.outcome(console, dry))
    assert "Dry run of aes-v1:" in text and "nothing was trained" in text
    rows = [line.strip("│ ").split() for line in text.splitlines() if line.startswith("│")]
    assert rows == [["steps", "│", "1,200"], ["packing", "│", "on"]]
