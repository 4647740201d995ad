"""The one place that maps domain error codes to gRPC status codes."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cryptotune.errors import ERROR_CODE_METADATA_KEY
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.CONFIG_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.DATA_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.REQUEST_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UPLOAD_CORRUPT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.BLOB_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.JOB_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.JOB_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.JOB_STATE_CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESUME_REFUSED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.MODEL_UNAVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.REMOTE_CODE_REFUSED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.PATH_NOT_ALLOWED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.UPLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # UNAVAILABLE: retryable by definition; clients reconnect once the daemon is back.
    ErrorCode.DAEMON_SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

INTERNAL_MESSAGE = "internal error in the daemon (incident {incident}); details are in the daemon's log"
# The status message travels percent-encoded in a trailer; clients drop the whole status (and see
# RESOURCE_EXHAUSTED "received metadata size exceeds ...") past 8 KiB of metadata, so long messages,
# such as one echoing a huge request field, are cut well below that.
MAX_MESSAGE_WIRE_BYTES = 4096
_TRUNCATED = " … (message truncated)"


def _wire_size(text: str) -> int:
    """Bytes of ``text`` once percent-encoded as grpc-message (printable ASCII but '%' stays as is)."""
    return sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in text.encode())


def bounded_message(message: str, limit: int = MAX_MESSAGE_WIRE_BYTES) -> str:
    """``message``, cut so that its encoded form fits in ``limit`` bytes (a lone surrogate shown escaped)."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if _wire_size(message) <= limit:
        return message
    budget = limit - _wire_size(_TRUNCATED)
    used = 0
    for index, char in enumerate(message):
        used += _wire_size(char)
        if used > budget:
            return message[:index] + _TRUNCATED
    return message  # pragma: no cover - the loop always cuts


def status_for(error: CryptotuneError) -> grpc.StatusCode:
    """The gRPC status for a domain error."""
    return STATUS_BY_CODE.get(error.code, grpc.StatusCode.INTERNAL)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> None:
    """Ends the RPC with the status for ``error``; unknown errors become a generic INTERNAL."""
    if isinstance(error, CryptotuneError):
        context.set_trailing_metadata(((ERROR_CODE_METADATA_KEY, error.code.value),))
        await context.abort(status_for(error), bounded_message(error.message))
    incident = uuid.uuid4().hex[:8]
    # The traceback goes to the daemon log only: clients never see internals.
    log.error("incident %s: unexpected error", incident, exc_info=error)
    context.set_trailing_metadata(((ERROR_CODE_METADATA_KEY, ErrorCode.INTERNAL.value),))
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE.format(incident=incident))


_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Self = TypeVar("_Self")


def unary(
    method: Callable[[_Self, _Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Resp]],
) -> Callable[[_Self, _Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Resp]]:
    """Wraps a unary servicer method so that every error goes through the catalog."""

    @functools.wraps(method)
    async def wrapper(self: _Self, request: _Req, context: grpc.aio.ServicerContext[Any, Any]) -> _Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with(context, error)
            raise  # unreachable: abort raises

    return wrapper


def streaming(
    method: Callable[[_Self, _Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[_Resp]],
) -> Callable[[_Self, _Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[_Resp]]:
    """Wraps a server-streaming servicer method so that every error goes through the catalog."""

    @functools.wraps(method)
    async def wrapper(
        self: _Self, request: _Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[_Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with(context, error)

    return wrapper
