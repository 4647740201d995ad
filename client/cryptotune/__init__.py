"""cryptotune thin client: the Python SDK and the ``cryptotune`` CLI (no torch needed)."""

from cryptotune.client import Client
from cryptotune.errors import (
    AlreadyExists,
    CryptotuneError,
    DaemonUnavailable,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unimplemented,
)
from cryptotune.types import EventType, JobState, StageState

__version__ = "0.1.0"

__all__ = [
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
