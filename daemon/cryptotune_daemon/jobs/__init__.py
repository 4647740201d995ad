"""Jobs: what the daemon knows and does about jobs (model, store, submission, scheduler, supervisor)."""

from cryptotune_daemon.jobs.model import (
    TERMINAL_STATES,
    TRANSITIONS,
    Job,
    JobEvent,
    JobState,
    Progress,
    StageStatus,
    generate_job_id,
    generate_pipeline_id,
    validate_pipeline_id,
)
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.worker.state import STAGES

__all__ = [
    "STAGES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Job",
    "JobEvent",
    "JobState",
    "JobStore",
    "Progress",
    "StageStatus",
    "generate_job_id",
    "generate_pipeline_id",
    "validate_pipeline_id",
]
