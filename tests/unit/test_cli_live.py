"""The CLI's live view: what it shows for the events a job emits."""

from __future__ import annotations

from typing import Any

from cryptotune.cli.live import JobView, _plain_line
from cryptotune.types import JobEvent


def _events(*items: tuple[str, dict[str, Any]]) -> list[JobEvent]:
    return [JobEvent(job_id="j", seq=i, type=t, ts=0.0, data=d) for i, (t, d) in enumerate(items, start=1)]


def test_a_cancel_marks_the_running_stage_cancelled_and_keeps_finished_ones() -> None:
    view = JobView(job_id="j")
    for event in _events(
        ("state", {"state": "running"}),
        ("stage_started", {"stage": "init"}),
        ("stage_completed", {"stage": "init", "seconds": 1.0}),
        ("stage_started", {"stage": "data_prep"}),
        ("state", {"state": "cancelling"}),
        ("state", {"state": "cancelled", "reason": "cancelled by user"}),
    ):
        view.apply(event)
    assert view.terminal and view.failure == "cancelled by user"
    assert (view.stages["init"], view.stages["data_prep"], view.stages["training"]) == (
        "done",
        "cancelled",
        "pending",
    )


def test_a_failed_job_marks_the_running_stage_failed() -> None:
    view = JobView(job_id="j")
    for event in _events(("stage_started", {"stage": "training"}), ("state", {"state": "failed"})):
        view.apply(event)
    assert view.stages["training"] == "failed"


def test_the_plan_line_reads_as_a_sentence_not_a_dict() -> None:
    (event,) = _events(
        (
            "plan",
            {
                "steps": 68,
                "train_samples": 64,
                "micro_batch_size": 4,
                "gradient_accumulation_steps": 2,
                "world_size": 1,
                "effective_batch_size": 8,
                "precision": "fp32",
                "device": "cpu",
                "gradient_checkpointing": False,
                "memory_estimate_mb": 1234.4,
                "memory_budget_mb": 20000,
            },
        ),
    )
    assert _plain_line(event) == (
        "[1] plan: 68 steps over 64 samples; micro-batch 4 × accumulation 2 × 1 process(es) = 8; "
        "fp32 on cpu; gradient checkpointing off; estimated peak 1,234 MB of 20,000 MB"
    )
