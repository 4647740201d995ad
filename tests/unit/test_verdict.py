"""The verdict on a job whose worker is gone (jobs/verdict.py): one pure function, every case."""

from __future__ import annotations

import signal

import pytest

from cryptotune_daemon.jobs.model import JobState
from cryptotune_daemon.jobs.verdict import Verdict, WorkerOutcome, decide_verdict


def outcome(**changes: object) -> WorkerOutcome:
    facts: dict[str, object] = {
        "state": JobState.RUNNING,
        "has_result": False,
        "failure": "",
        "dry_run": False,
        "exit_code": None,
        "followed": True,
        "ref": "p1",
    }
    facts.update(changes)
    return WorkerOutcome(**facts)  # type: ignore[arg-type]


@pytest.mark.parametrize("followed", [True, False])
def test_a_cancel_wins_over_everything(followed: bool) -> None:
    verdict = decide_verdict(
        outcome(state=JobState.CANCELLING, has_result=True, failure="boom", followed=followed)
    )
    assert verdict == Verdict(JobState.CANCELLED, "cancelled by user")


@pytest.mark.parametrize("followed", [True, False])
def test_a_result_means_success_even_if_the_worker_then_crashed(followed: bool) -> None:
    assert decide_verdict(outcome(has_result=True, exit_code=-9, followed=followed)) == Verdict(
        JobState.SUCCEEDED
    )


def test_a_reported_failure_fails_the_job_with_its_reason() -> None:
    verdict = decide_verdict(outcome(has_result=True, failure="data_prep failed: bad record", exit_code=1))
    assert verdict == Verdict(JobState.FAILED, "data_prep failed: bad record")


def test_a_dry_run_that_exited_cleanly_succeeded() -> None:
    assert decide_verdict(outcome(dry_run=True, exit_code=0)) == Verdict(JobState.SUCCEEDED)
    assert decide_verdict(outcome(dry_run=False, exit_code=0)).target == JobState.RECOVERING


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (None, "ended without reporting a result"),
        (-signal.SIGKILL, "killed by SIGKILL (out of memory?"),
        (128 + signal.SIGTERM, "stopped by SIGTERM from outside the daemon"),
        (3, "exited with code 3 without a reason"),
    ],
)
def test_a_followed_worker_lost_without_a_verdict_is_resumed_counted(code: int | None, words: str) -> None:
    verdict = decide_verdict(outcome(exit_code=code))
    assert verdict.target == JobState.RECOVERING and verdict.count_retry
    assert words in verdict.reason and "cryptotune logs p1" in verdict.reason


@pytest.mark.parametrize(
    ("changes", "reason", "counted"),
    [
        ({"state": JobState.RECOVERING}, "resuming an interrupted recovery", False),
        ({"started": False}, "the daemon stopped before the worker started", False),
        ({"stopped_by_daemon": True}, "the daemon was stopped while the job ran", False),
        ({}, "the worker ended while the daemon was down", True),
    ],
)
def test_a_worker_gone_while_the_daemon_was_down_is_resumed(
    changes: dict[str, object], reason: str, counted: bool
) -> None:
    verdict = decide_verdict(outcome(followed=False, **changes))
    assert verdict == Verdict(JobState.RECOVERING, reason, count_retry=counted)
