"""Request checks: field validation, output-dir policy, status message bounds, undecodable messages."""

from __future__ import annotations

import asyncio
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptotune.errors import ERROR_CODE_METADATA_KEY
from cryptotune.proto.v1 import config_pb2, config_pb2_grpc
from cryptotune_daemon.auth import BearerTokenInterceptor
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.submission import SubmitRequest, prepare
from cryptotune_daemon.services.error_catalog import MAX_MESSAGE_WIRE_BYTES, bounded_message, unary
from cryptotune_daemon.services.request_guard import RequestGuardInterceptor
from cryptotune_daemon.services.validation import config_size, int_range, job_ref, path_text
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore

CONFIG = "model:\n  model_name: builtin:tiny-qwen3\n"


# gRPC's grpc-message encoding, per its HTTP/2 protocol spec: every byte outside printable ASCII,
# and '%', becomes %XX. The standard library's percent-encoder is the independent reference.
_GRPC_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _wire_size(text: str) -> int:
    return len(urllib.parse.quote(text, safe=_GRPC_MESSAGE_SAFE))


def test_the_wire_size_reference_encodes_as_grpc_does() -> None:
    assert urllib.parse.quote("a b%密\n", safe=_GRPC_MESSAGE_SAFE) == "a b%25%E5%AF%86%0A"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=6000))
def test_bounded_message_fits_the_trailer_and_keeps_short_messages(message: str) -> None:
    bounded = bounded_message(message)
    assert _wire_size(bounded) <= MAX_MESSAGE_WIRE_BYTES
    if _wire_size(message) <= MAX_MESSAGE_WIRE_BYTES:
        assert bounded == message
    else:
        assert bounded.endswith("(message truncated)")
        assert message.startswith(bounded.removesuffix(" … (message truncated)"))


def test_bounded_message_counts_percent_encoding() -> None:
    assert bounded_message("a" * 4096) == "a" * 4096
    cut = bounded_message("密" * 2000)  # 9 wire bytes per character
    assert cut.startswith("密" * 400) and _wire_size(cut) <= MAX_MESSAGE_WIRE_BYTES
    assert bounded_message("%" * 2000).endswith("(message truncated)")


def _refused(call: Callable[[], Any]) -> CryptotuneError:
    with pytest.raises(CryptotuneError) as info:
        call()
    return info.value


def test_field_checks_say_what_is_wrong() -> None:
    assert job_ref("job-1") == "job-1" and job_ref("/a/b") == "/a/b"
    assert "job is required" in _refused(lambda: job_ref("")).message
    assert "NUL byte" in _refused(lambda: job_ref("/a\x00b")).message
    assert "longer than 4096 bytes" in _refused(lambda: job_ref("/" + "a/" * 2100)).message
    assert "longer than 255 bytes" in _refused(lambda: path_text("x" * 256, "model", "hint")).message
    error = _refused(lambda: int_range(-1, "limit", 0, 1000, "0 means the default"))
    assert error.code is ErrorCode.REQUEST_INVALID
    assert error.message == "limit must be between 0 and 1000 (0 means the default), got -1"
    assert config_size("a" * 1024 * 1024) and _refused(lambda: config_size("字" * 400_000)).code is (
        ErrorCode.RESOURCE_EXHAUSTED
    )


# -- output directories and resume references (domain policy) ----------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> tuple[DaemonSettings, JobStore, BlobStore, str, Path]:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    (allowed / "loop").symlink_to(allowed / "loop")
    settings = DaemonSettings(state_dir=tmp_path / "state", listen=(), allowed_output_roots=(allowed,))
    blobs = BlobStore(tmp_path / "blobs")
    with blobs.writer() as writer:
        writer.write(b'{"instruction": "q", "output": "a"}\n')
        digest = writer.commit().digest
    return settings, JobStore(tmp_path / "jobs.sqlite3"), blobs, digest, allowed


def _prepare(env: tuple[DaemonSettings, JobStore, BlobStore, str, Path], **fields: str) -> CryptotuneError:
    settings, store, blobs, digest, allowed = env
    values = {"output_dir": str(allowed / "run"), "pipeline_id": "", "resume": "", **fields}
    request = SubmitRequest(
        request_id="r1",
        data_digest=digest,
        data_name="",
        config_yaml=CONFIG,
        config_name="",
        dry_run=True,
        **values,
    )
    return _refused(lambda: prepare(request, settings=settings, store=store, blobs=blobs, gpu_count=0))


@pytest.mark.parametrize(
    ("output_dir", "code", "words"),
    [
        ("{allowed}/escape/run", ErrorCode.PATH_NOT_ALLOWED, "outside the daemon's allowed roots"),
        ("{allowed}/../outside/run", ErrorCode.PATH_NOT_ALLOWED, "outside the daemon's allowed roots"),
        ("{allowed}/..", ErrorCode.PATH_NOT_ALLOWED, "outside the daemon's allowed roots"),
        ("relative/run", ErrorCode.REQUEST_INVALID, "must be an absolute path"),
        ("../run", ErrorCode.REQUEST_INVALID, "must be an absolute path"),
        ("", ErrorCode.REQUEST_INVALID, "output_dir is required"),
        ("{allowed}/a\x00b", ErrorCode.REQUEST_INVALID, "NUL byte"),
        ("{allowed}/" + "a" * 256, ErrorCode.REQUEST_INVALID, "longer than 255 bytes"),
        ("{allowed}/" + "a/" * 2100, ErrorCode.REQUEST_INVALID, "longer than 4096 bytes"),
        ("{allowed}/loop/run", ErrorCode.REQUEST_INVALID, "cannot be resolved"),
    ],
)
def test_output_dir_policy(
    env: tuple[DaemonSettings, JobStore, BlobStore, str, Path], output_dir: str, code: ErrorCode, words: str
) -> None:
    error = _prepare(env, output_dir=output_dir.replace("{allowed}", str(env[4])))
    assert error.code is code and words in error.message, error.message


@pytest.mark.parametrize(
    "resume", ["x@" + "9" * 5000, "x@-1", "@", "a@b@c", "../x", "x@١٢", "x@1@2", "a" * 65]
)
def test_resume_reference_must_be_an_id_and_a_step_number(
    env: tuple[DaemonSettings, JobStore, BlobStore, str, Path], resume: str
) -> None:
    error = _prepare(env, resume=resume)
    assert error.code is ErrorCode.REQUEST_INVALID and "PIPELINE_ID@STEP" in error.message, error.message


def test_unknown_resume_pipeline_is_not_found(
    env: tuple[DaemonSettings, JobStore, BlobStore, str, Path],
) -> None:
    assert _prepare(env, resume="nope@12").code is ErrorCode.JOB_NOT_FOUND


# -- undecodable messages, through a real in-process server ----------------------------------------


class _Echo(config_pb2_grpc.ConfigServiceServicer):
    async def GetTemplate(
        self, request: config_pb2.GetTemplateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.GetTemplateResponse:
        return config_pb2.GetTemplateResponse()

    async def GetJsonSchema(
        self, request: config_pb2.GetJsonSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.GetJsonSchemaResponse:
        return config_pb2.GetJsonSchemaResponse()

    @unary
    async def ValidateConfig(
        self, request: config_pb2.ValidateConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.ValidateConfigResponse:
        return config_pb2.ValidateConfigResponse(valid=request.text == "ok")


def _serve(interceptors: list[grpc.aio.ServerInterceptor], calls: Callable[[grpc.Channel], None]) -> None:
    address = f"unix://{tempfile.mkdtemp(prefix='ct-', dir='/tmp')}/s.sock"

    async def main() -> None:
        server = grpc.aio.server(interceptors=interceptors)
        config_pb2_grpc.add_ConfigServiceServicer_to_server(_Echo(), server)
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
        reflection.enable_server_reflection(("grpc.health.v1.Health", reflection.SERVICE_NAME), server)
        server.add_insecure_port(address)
        await server.start()
        try:

            def run() -> None:
                with grpc.insecure_channel(address) as channel:
                    calls(channel)

            await asyncio.to_thread(run)
        finally:
            await server.stop(None)

    asyncio.run(main())


def _status(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, str]:
    try:
        call()
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        trailer = dict(error.trailing_metadata() or ())
        return error.code(), error.details() or "", str(trailer.get(ERROR_CODE_METADATA_KEY, ""))
    return grpc.StatusCode.OK, "", ""


def test_undecodable_requests_are_invalid_argument_for_every_kind_of_method() -> None:
    def calls(channel: grpc.Channel) -> None:
        validate: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/cryptotune.proto.v1.ConfigService/ValidateConfig"
        )
        code, details, error_code = _status(lambda: validate(b"\x0a\x02\xff\xfe", timeout=5))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and error_code == "request.invalid"
        assert "could not be decoded" in details and "DecodeError" not in details
        good = config_pb2.ValidateConfigRequest(text="ok").SerializeToString()
        assert config_pb2.ValidateConfigResponse.FromString(validate(good, timeout=5)).valid
        check: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/grpc.health.v1.Health/Check"
        )
        assert _status(lambda: check(b"\xff", timeout=5))[0] is grpc.StatusCode.INVALID_ARGUMENT
        # Health's Watch is a coroutine that writes with context.write: it still streams.
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
        assert next(iter(watch)).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        raw_watch: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/grpc.health.v1.Health/Watch"
        )
        assert _status(lambda: list(raw_watch(b"\x08", timeout=5)))[0] is grpc.StatusCode.INVALID_ARGUMENT
        info: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        )
        code, details, _ = _status(lambda: list(info(iter([b"\x08"]), timeout=5)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "could not be decoded" in details

    _serve([RequestGuardInterceptor()], calls)


def test_authentication_is_checked_before_decoding() -> None:
    def calls(channel: grpc.Channel) -> None:
        validate: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/cryptotune.proto.v1.ConfigService/ValidateConfig"
        )
        assert _status(lambda: validate(b"\x08", timeout=5))[0] is grpc.StatusCode.UNAUTHENTICATED
        token = (("authorization", "Bearer s3cret"),)
        code, _, _ = _status(lambda: validate(b"\x08", timeout=5, metadata=token))
        assert code is grpc.StatusCode.INVALID_ARGUMENT

    _serve([BearerTokenInterceptor("s3cret"), RequestGuardInterceptor()], calls)
