"""Bearer-token authentication for TCP listeners, and the daemon's token file."""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

DENIED = (
    "missing or wrong token: pass --token or set $CRYPTOTUNE_TOKEN (the daemon's token file is auth_token)"
)


def load_or_create_token(path: Path) -> str:
    """Reads the token file, creating it (mode 0600, 256 random bits) when absent."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as error:
        raise CryptotuneError(
            ErrorCode.UNAUTHENTICATED, f"cannot read token file {path}: {error.strerror}"
        ) from None
    if token:
        return token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    # O_EXCL + 0600 from the start: the token is never readable by others, not even briefly.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.replace(tmp, path)
    return token


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call (streams, health and reflection included) without the right token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        supplied = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                supplied = value.decode() if isinstance(value, bytes) else str(value)
        handler = await continuation(handler_call_details)
        # compare_digest: the comparison takes the same time whatever prefix matches.
        if handler is None or hmac.compare_digest(supplied.encode(), self._expected):
            return handler
        return _denying(handler)


async def _deny_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
    yield None  # pragma: no cover - abort raises


def _denying(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_deny_unary, **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_deny_unary, **codec)
    return grpc.stream_stream_rpc_method_handler(_deny_stream, **codec)
