"""cryptotune thin client: the Python SDK and the ``cryptotune`` CLI (no torch needed).

The exports are loaded on first use (PEP 562), so ``cryptotune --help`` and ``--version`` pay
for neither gRPC nor the generated stubs: ``from cryptotune import Client`` imports the SDK then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Where each export lives; every name of ``__all__`` has exactly one entry (pinned by a test).
_EXPORTS = {
    "AlreadyExists": "cryptotune.errors",
    "Client": "cryptotune.client",
    "CryptotuneError": "cryptotune.errors",
    "DaemonUnavailable": "cryptotune.errors",
    "EventType": "cryptotune.types",
    "FailedPrecondition": "cryptotune.errors",
    "InternalError": "cryptotune.errors",
    "InvalidArgument": "cryptotune.errors",
    "JobState": "cryptotune.types",
    "NotFound": "cryptotune.errors",
    "PermissionDenied": "cryptotune.errors",
    "ResourceExhausted": "cryptotune.errors",
    "StageState": "cryptotune.types",
    "Unauthenticated": "cryptotune.errors",
    "Unimplemented": "cryptotune.errors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cryptotune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
