"""A gRPC server interceptor that counts calls by method and status code and times them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from cryptotune_daemon.observability.metrics import DaemonMetrics

WATCH_METHOD_SUFFIX = "/WatchJob"


def _code_of(context: Any, error: BaseException | None) -> str:
    """The call's status code: what the handler set (abort included), else from how it ended."""
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return grpc.StatusCode.OK.name
    return (grpc.StatusCode.UNKNOWN if isinstance(error, Exception) else grpc.StatusCode.CANCELLED).name


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records every call (authenticated or not) in ``cryptotune_rpc_*``; WatchJob streams also count
    as open watch streams while they run."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method or "unknown"
        return self._wrapped(handler, method)

    def _finish(self, method: str, started: float, context: Any, error: BaseException | None) -> None:
        self._metrics.rpcs.labels(method, _code_of(context, error)).inc()
        self._metrics.rpc_seconds.labels(method).observe(time.monotonic() - started)

    def _wrapped(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        watch = method.endswith(WATCH_METHOD_SUFFIX)

        def single(behavior: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: Any) -> Any:
                started, error = time.monotonic(), None
                try:
                    return await behavior(request, context)
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    self._finish(method, started, context, error)

            return call

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: Any) -> AsyncIterator[Any]:
                started, error = time.monotonic(), None
                gauge = self._metrics.watch_streams.labels("grpc") if watch else None
                if gauge is not None:
                    gauge.inc()
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    if gauge is not None:
                        gauge.dec()
                    self._finish(method, started, context, error)

            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(single(handler.unary_unary), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(single(handler.stream_unary), **codec)
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **codec)
