"""Domain errors: each carries a code that the error catalog maps to a gRPC status."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Stable, public error codes. The value travels to clients in trailing metadata."""

    CONFIG_INVALID = "config.invalid"
    DATA_INVALID = "data.invalid"
    BLOB_NOT_FOUND = "blob.not_found"
    UPLOAD_TOO_LARGE = "upload.too_large"
    UPLOAD_CORRUPT = "upload.corrupt"
    REQUEST_INVALID = "request.invalid"
    JOB_NOT_FOUND = "job.not_found"
    JOB_EXISTS = "job.exists"
    JOB_STATE_CONFLICT = "job.state_conflict"
    RESUME_REFUSED = "job.resume_refused"
    MODEL_UNAVAILABLE = "model.unavailable"
    REMOTE_CODE_REFUSED = "model.remote_code_refused"
    PATH_NOT_ALLOWED = "path.not_allowed"
    UNAUTHENTICATED = "auth.unauthenticated"
    NOT_IMPLEMENTED = "not_implemented"
    DASHBOARD_DISABLED = "dashboard.disabled"
    RESOURCE_EXHAUSTED = "resource.exhausted"
    DAEMON_SHUTTING_DOWN = "daemon.shutting_down"
    INTERNAL = "internal"


class CryptotuneError(Exception):
    """An error a user can act on. ``message`` is shown to clients verbatim."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message
