"""Domain error codes → gRPC status codes → typed SDK exceptions, end to end through a real server."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import grpc
import pytest

from cryptotune import errors as sdk_errors
from cryptotune.client import Client
from cryptotune.proto.v1 import config_pb2, config_pb2_grpc
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.services.error_catalog import STATUS_BY_CODE, unary

EXPECTED_SDK_CLASS = {
    grpc.StatusCode.INVALID_ARGUMENT: sdk_errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: sdk_errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: sdk_errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: sdk_errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: sdk_errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: sdk_errors.ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: sdk_errors.Unauthenticated,
    grpc.StatusCode.UNIMPLEMENTED: sdk_errors.Unimplemented,
    grpc.StatusCode.UNAVAILABLE: sdk_errors.DaemonUnavailable,
    grpc.StatusCode.INTERNAL: sdk_errors.InternalError,
}


def test_every_domain_code_has_a_status() -> None:
    assert set(STATUS_BY_CODE) == set(ErrorCode)
    assert STATUS_BY_CODE[ErrorCode.CONFIG_INVALID] == grpc.StatusCode.INVALID_ARGUMENT
    assert STATUS_BY_CODE[ErrorCode.JOB_NOT_FOUND] == grpc.StatusCode.NOT_FOUND
    assert STATUS_BY_CODE[ErrorCode.UPLOAD_TOO_LARGE] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert STATUS_BY_CODE[ErrorCode.UNAUTHENTICATED] == grpc.StatusCode.UNAUTHENTICATED
    assert STATUS_BY_CODE[ErrorCode.RESUME_REFUSED] == grpc.StatusCode.FAILED_PRECONDITION
    assert STATUS_BY_CODE[ErrorCode.DAEMON_SHUTTING_DOWN] == grpc.StatusCode.UNAVAILABLE


class _Raising(config_pb2_grpc.ConfigServiceServicer):
    """Raises whatever the request's text names."""

    @unary
    async def ValidateConfig(
        self, request: config_pb2.ValidateConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.ValidateConfigResponse:
        if request.text.startswith("code:"):
            raise CryptotuneError(
                ErrorCode(request.text.removeprefix("code:").strip()), "domain message for users"
            )
        raise RuntimeError("secret internal detail /etc/passwd")


def _serve_and_call(texts: list[str]) -> list[BaseException]:
    socket_dir = Path(tempfile.mkdtemp(prefix="ct-", dir="/tmp"))
    address = f"unix://{socket_dir}/s.sock"
    outcomes: list[BaseException] = []

    async def main() -> None:
        server = grpc.aio.server()
        config_pb2_grpc.add_ConfigServiceServicer_to_server(_Raising(), server)
        server.add_insecure_port(address)
        await server.start()
        try:

            def calls() -> None:
                with Client(address) as client:
                    for text in texts:
                        try:
                            client.validate_config(text + "\n")
                        except sdk_errors.CryptotuneError as error:
                            outcomes.append(error)

            await asyncio.to_thread(calls)
        finally:
            await server.stop(None)

    asyncio.run(main())
    return outcomes


def test_domain_errors_reach_the_sdk_as_typed_exceptions() -> None:
    codes = list(ErrorCode)
    outcomes = _serve_and_call([f"code:{code.value}" for code in codes])
    assert len(outcomes) == len(codes)
    for code, error in zip(codes, outcomes, strict=True):
        assert isinstance(error, sdk_errors.CryptotuneError)
        expected = EXPECTED_SDK_CLASS[STATUS_BY_CODE[code]]
        assert type(error) is expected, (code, type(error))
        assert error.code == code.value
        if code is not ErrorCode.INTERNAL:
            assert error.message == "domain message for users"


def test_unexpected_errors_become_generic_internal_without_details() -> None:
    (error,) = _serve_and_call(["boom"])
    assert isinstance(error, sdk_errors.InternalError)
    assert (
        "secret" not in error.message and "passwd" not in error.message and "Traceback" not in error.message
    )
    assert "incident" in error.message


def test_unavailable_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    with (
        Client(f"unix://{tmp_path}/none.sock") as client,
        pytest.raises(sdk_errors.DaemonUnavailable) as info,
    ):
        client.list_gpus()
    assert "cryptotuned --listen" in info.value.message
