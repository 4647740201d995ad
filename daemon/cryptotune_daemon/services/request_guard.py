"""Answers request bytes that do not decode with INVALID_ARGUMENT, for every service (health too)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.services.error_catalog import abort_with

# Strings: the runtime classes are not generic, only their stubs are.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class UndecodableRequest(CryptotuneError):
    """A request message whose bytes are not a valid protobuf message of the method's request type."""

    def __init__(self, method: str) -> None:
        super().__init__(
            ErrorCode.REQUEST_INVALID,
            f"the request to {method} could not be decoded: its bytes are not a valid protobuf "
            "message of that method's request type (a client built from other .proto files, or a "
            "corrupted stream?); use the cryptotune SDK or stubs generated from protos/cryptotune/proto/v1",
        )


class _Undecodable:
    """Stands in for a message that did not decode, so the call fails inside the handler, not in gRPC."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    decode = deserializer

    def lenient(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception:  # DecodeError on junk; gRPC would turn any error into UNKNOWN + its text.
            return _UNDECODABLE

    return lenient


async def _checked(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNDECODABLE:
            raise UndecodableRequest(method)
        yield request


def _guard_single(behavior: Callable[..., Any], method: str) -> Callable[..., Any] | None:
    """Wraps a unary-request behavior; None when it is neither a coroutine nor an async generator."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            if request is _UNDECODABLE:
                await abort_with(context, UndecodableRequest(method))
            async for item in behavior(request, context):
                yield item

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: _Context) -> Any:
            if request is _UNDECODABLE:
                await abort_with(context, UndecodableRequest(method))
            return await behavior(request, context)

        return unary
    return None


def _guard_streaming(behavior: Callable[..., Any], method: str) -> Callable[..., Any] | None:
    """Wraps a streaming-request behavior; a bad message mid-stream ends the call with INVALID_ARGUMENT."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: AsyncIterator[Any], context: _Context) -> AsyncIterator[Any]:
            try:
                async for item in behavior(_checked(requests, method), context):
                    yield item
            except UndecodableRequest as error:
                await abort_with(context, error)

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def unary(requests: AsyncIterator[Any], context: _Context) -> Any:
            try:
                return await behavior(_checked(requests, method), context)
            except UndecodableRequest as error:
                await abort_with(context, error)

        return unary
    return None


def guarded(handler: _Handler, method: str) -> _Handler:
    """The same handler, but undecodable request messages end the call with INVALID_ARGUMENT."""
    codec = {
        "request_deserializer": _lenient(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        wrapped = _guard_single(handler.unary_unary, method)
        return grpc.unary_unary_rpc_method_handler(wrapped, **codec) if wrapped else handler
    if handler.unary_stream is not None:
        wrapped = _guard_single(handler.unary_stream, method)
        return grpc.unary_stream_rpc_method_handler(wrapped, **codec) if wrapped else handler
    if handler.stream_unary is not None:
        wrapped = _guard_streaming(handler.stream_unary, method)
        return grpc.stream_unary_rpc_method_handler(wrapped, **codec) if wrapped else handler
    if handler.stream_stream is not None:
        wrapped = _guard_streaming(handler.stream_stream, method)
        return grpc.stream_stream_rpc_method_handler(wrapped, **codec) if wrapped else handler
    return handler


class RequestGuardInterceptor(grpc.aio.ServerInterceptor):
    """Applies :func:`guarded` to every method: junk bytes get INVALID_ARGUMENT, never UNKNOWN or INTERNAL.

    Without it, gRPC answers a message that fails to decode with UNKNOWN and the decoder's exception
    text, and a bad message in the middle of an upload stream surfaces as an internal error.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return guarded(handler, handler_call_details.method)
