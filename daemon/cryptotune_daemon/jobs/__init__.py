"""Jobs: the domain model, the durable store and (later) the scheduler and supervisor."""

from cryptotune_daemon.jobs.model import (
    STAGES,
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
