"""What the dashboard sends: jobs as JSON documents and events as Server-Sent Events frames."""

from __future__ import annotations

import json
import math
from typing import Any

from cryptotune_daemon.jobs.model import Job, JobEvent


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def job_summary(job: Job) -> dict[str, Any]:
    """The fields the jobs list shows."""
    summary: dict[str, Any] = _finite(
        {
            "job_id": job.job_id,
            "pipeline_id": job.pipeline_id,
            "state": job.state.value,
            "stage": job.stage,
            "step": job.progress.step,
            "total_steps": job.progress.total_steps,
            "loss": job.progress.loss if job.progress.step > 0 else None,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "dry_run": job.dry_run,
            "failure_reason": job.failure_reason,
            "waiting_for": job.waiting_for,
        }
    )
    return summary


def job_detail(job: Job, log_tail: list[str], report: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the job page shows at load; the event stream keeps it current."""
    detail = job_summary(job)
    detail.update(
        {
            "stages": [{"name": s.name, "state": s.state, "seconds": s.seconds} for s in job.stages],
            "progress": job.progress.to_dict(),
            "plan": job.plan,
            "output_dir": job.output_dir,
            "device": job.device,
            "retries": job.retries,
            "resumed_from": job.resumed_from,
            "log_tail": log_tail,
            "report": report,
        }
    )
    finite: dict[str, Any] = _finite(detail)
    return finite


def sse_frame(event: JobEvent) -> bytes:
    """One event as an SSE frame; its id is the event's seq, so a reconnect resumes after it."""
    payload = json.dumps(
        _finite({"seq": event.seq, "type": event.type, "ts": event.ts, "data": event.data}),
        ensure_ascii=False,
        allow_nan=False,
        default=str,
    )
    return f"id: {event.seq}\nevent: job\ndata: {payload}\n\n".encode()


def parse_last_event_id(header: str | None, query: str | None) -> int:
    """Where a stream resumes: the ``Last-Event-ID`` header (a reconnect), else ``?after=``, else 0.

    Raises:
        ValueError: neither is a non-negative integer.
    """
    for raw in (header, query):
        if raw is not None and raw.strip() != "":
            value = int(raw.strip())
            if value < 0:
                raise ValueError("must be >= 0")
            return value
    return 0
