"""A finished (or vanished) worker's verdict: what the job becomes, decided from facts alone.

The supervisor calls :func:`decide_verdict` when it has followed a worker to its end, and again at
start-up for a job whose worker ended while the daemon was down; both then apply the verdict. An
out-of-memory relaunch request is handled before (``Supervisor._relaunch_after_oom``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from cryptotune_daemon.jobs.model import JobState


@dataclass(frozen=True)
class WorkerOutcome:
    """What is known about a job whose worker no longer runs.

    Attributes:
        state: the job's state now (RUNNING, CANCELLING or RECOVERING).
        has_result: the latest run emitted its ``result`` event.
        failure: the reason of the latest run's ``failed`` event ("" when none).
        dry_run: the job is a dry run.
        exit_code: the worker's exit code (negative: killed by that signal); None when unknown.
        followed: this daemon followed the worker to its end (False: found it gone at start-up).
        started: a worker was recorded as launched (only meaningful when not ``followed``).
        stopped_by_daemon: the previous daemon's graceful stop ended the worker (not ``followed``).
        ref: the job's pipeline id, for the hints in messages.
    """

    state: JobState
    has_result: bool
    failure: str
    dry_run: bool
    exit_code: int | None
    followed: bool
    started: bool = True
    stopped_by_daemon: bool = False
    ref: str = ""


@dataclass(frozen=True)
class Verdict:
    """What to do with the job.

    Attributes:
        target: CANCELLED, SUCCEEDED or FAILED (record it), or RECOVERING (resume the job from its
            newest verified checkpoint, within the retry budget).
        reason: the transition's reason.
        count_retry: for RECOVERING, whether this was a real worker death that uses up the budget.
    """

    target: JobState
    reason: str = ""
    count_retry: bool = False


def decide_verdict(outcome: WorkerOutcome) -> Verdict:
    """The verdict for a job whose worker is gone.

    A cancel wins; then a ``result`` (the adapter and report are written before it, so a crash
    after it loses nothing); a dry run that exited cleanly; a reported failure. Anything else is a
    lost worker: resume it, counting only real worker deaths against the retry budget.
    """
    if outcome.state == JobState.CANCELLING:
        return Verdict(JobState.CANCELLED, "cancelled by user")
    if outcome.has_result and not outcome.failure:
        return Verdict(JobState.SUCCEEDED)
    if outcome.dry_run and outcome.exit_code == 0 and not outcome.failure:
        return Verdict(JobState.SUCCEEDED)
    if outcome.failure:
        return Verdict(JobState.FAILED, outcome.failure)
    if outcome.followed:
        return Verdict(JobState.RECOVERING, _describe_exit(outcome.exit_code, outcome.ref), count_retry=True)
    if outcome.state == JobState.RECOVERING:
        return Verdict(JobState.RECOVERING, "resuming an interrupted recovery")  # counted before
    if not outcome.started:
        return Verdict(JobState.RECOVERING, "the daemon stopped before the worker started")
    if outcome.stopped_by_daemon:
        return Verdict(JobState.RECOVERING, "the daemon was stopped while the job ran")
    return Verdict(JobState.RECOVERING, "the worker ended while the daemon was down", count_retry=True)


def _describe_exit(code: int | None, ref: str) -> str:
    if code is None:
        return f"the worker ended without reporting a result; see 'cryptotune logs {ref}'"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the worker was killed by {name}{hint}; see 'cryptotune logs {ref}'"
    if code > 128 and code - 128 in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # The worker turns these into a clean exit (128 + signal), but no cancel was asked for.
        name = signal.Signals(code - 128).name
        return f"the worker was stopped by {name} from outside the daemon; see 'cryptotune logs {ref}'"
    return f"the worker exited with code {code} without a reason; see 'cryptotune logs {ref}'"
