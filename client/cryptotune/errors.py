"""Typed exceptions raised by the SDK, mapped from gRPC status codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # gRPC is imported by the code that makes calls; the CLI's --help never does
    import grpc

ERROR_CODE_METADATA_KEY = "cryptotune-error-code"


class CryptotuneError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        message: the daemon's public message, meant for users.
        code: the daemon's domain error code (e.g. ``"config.invalid"``), or "".
    """

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgument(CryptotuneError):
    """The request (a config, a data file, an option) is invalid."""


class NotFound(CryptotuneError):
    """A job, pipeline or upload does not exist."""


class AlreadyExists(CryptotuneError):
    """A pipeline id is already taken."""


class FailedPrecondition(CryptotuneError):
    """The request is valid but cannot be done in the current state."""


class PermissionDenied(CryptotuneError):
    """The daemon's policy refuses the request (output path, remote code…)."""


class ResourceExhausted(CryptotuneError):
    """A size limit was exceeded or the daemon is out of disk."""


class Unauthenticated(CryptotuneError):
    """Missing or wrong token."""


class DaemonUnavailable(CryptotuneError):
    """Nothing answers at the daemon's address, or the daemon is shutting down (retry later)."""


class Unimplemented(CryptotuneError):
    """The daemon does not offer this call (older version?)."""


class InternalError(CryptotuneError):
    """The daemon failed unexpectedly; details are in its log."""


# Keyed by ``grpc.StatusCode`` name, so this module (and every CLI command's error handling) loads
# without gRPC.
_BY_STATUS: dict[str, type[CryptotuneError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "FAILED_PRECONDITION": FailedPrecondition,
    "PERMISSION_DENIED": PermissionDenied,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAUTHENTICATED": Unauthenticated,
    "UNAVAILABLE": DaemonUnavailable,
    "UNIMPLEMENTED": Unimplemented,
}


def from_rpc_error(error: grpc.RpcError, address: str) -> CryptotuneError:
    """Turns a gRPC error into the matching typed exception."""
    import grpc

    status = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    code = ""
    if isinstance(error, grpc.Call):
        for key, value in error.trailing_metadata() or ():
            if key == ERROR_CODE_METADATA_KEY:
                code = str(value)
    if status == grpc.StatusCode.UNAVAILABLE and code:
        return DaemonUnavailable(details, code)  # the daemon said why (e.g. it is shutting down)
    if status == grpc.StatusCode.UNAVAILABLE:
        return DaemonUnavailable(
            f"no cryptotune daemon answers at {address} ({details}). Start one with "
            f"'cryptotuned --listen {address}' or check --address / $CRYPTOTUNE_ADDRESS.",
            code,
        )
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DaemonUnavailable(f"the daemon at {address} did not answer in time ({details})", code)
    return _BY_STATUS.get(status.name, InternalError)(details, code)
