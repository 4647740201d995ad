"""Fuzzes every RPC of one real daemon: bad input gets a precise status, never INTERNAL, a hang or a crash."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
import yaml
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptotune.errors import ERROR_CODE_METADATA_KEY
from cryptotune.proto.v1 import (
    config_pb2,
    config_pb2_grpc,
    data_pb2,
    data_pb2_grpc,
    gpu_pb2,
    gpu_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
)
from cryptotune_daemon.config.schema import SECTIONS
from tests.integration.conftest import RunningDaemon, short_tmp_dir, start_daemon, stop_daemon

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "client" / "cryptotune" / "examples" / "crypto_qa_zh.jsonl"

CALL_DEADLINE_S = 20.0
WARMUP_DEADLINE_S = 120.0
MAX_UPLOAD_MB = 1
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # the daemon's default gRPC receive cap
MAX_CONFIG_BYTES = 1024 * 1024
JOB_END_TIMEOUT_S = 90.0
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}

# What a well-behaved daemon may answer to bad input: each names the problem. INTERNAL, UNKNOWN
# (an exception that escaped) and DEADLINE_EXCEEDED (a hang) never are.
HANDLED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

VALID_CONFIG = """\
model:
  model_name: builtin:tiny-qwen3
  trust_remote_code: false
training:
  max_steps: 1
  max_seq_length: 512
  bf16: false
  eval_strategy: "no"
parallel:
  strategy: data_parallel
  world_size: 1
  enable_distributed: false
"""

SPECIAL_TEXTS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    "..",
    ".",
    "%s%n%x",
    "${HOME}",
    "'; DROP TABLE jobs; --",
    "\u202e\u200b\ufeff",
    "密码学",
    "🔐" * 8,
    "\U0010ffff",
    "@",
    "x@1",
    "x@" + "9" * 5000,
]

_utf8_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
# Huge strings up to (and past) the message cap; several byte widths.
_huge_text = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["a", "\x00", "é", "字", "/.."]),
    st.sampled_from([4_097, 70_000, 1_100_000, 2_900_000]),
)
TEXTS = st.one_of(_utf8_text, st.sampled_from(SPECIAL_TEXTS), _huge_text)
SMALL_TEXTS = st.one_of(_utf8_text, st.sampled_from(SPECIAL_TEXTS))

INT32 = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.sampled_from([0, 1, -1, 2, 16, 2048, 131_072, 131_073, 2**31 - 1, -(2**31)]),
)
INT64 = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), MAX_UPLOAD_BYTES, MAX_UPLOAD_BYTES + 1]),
)
HEX_DIGEST = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
JUNK_DIGESTS = st.one_of(
    HEX_DIGEST.map(str.upper),
    st.text(alphabet="0123456789abcdef", max_size=70),
    HEX_DIGEST.map(lambda d: d + "\n"),
    HEX_DIGEST.map(lambda d: "../" + d[3:]),
    SMALL_TEXTS,
)
DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def _short(value: object, limit: int = 300) -> str:
    if isinstance(value, Message) and value.ByteSize() > 100_000:
        return f"<{type(value).__name__} of {value.ByteSize()} bytes>"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


# -- the daemon under fuzz ------------------------------------------------------------------------


@dataclass
class Fuzzed:
    """One daemon shared by the module, with raw stubs and a few known objects."""

    daemon: RunningDaemon
    root: Path
    allowed: Path
    outside: Path
    channel: grpc.Channel
    config: config_pb2_grpc.ConfigServiceStub
    data: data_pb2_grpc.DataServiceStub
    gpus: gpu_pb2_grpc.GpuServiceStub
    jobs: job_pb2_grpc.JobServiceStub
    digest: str  # a real uploaded data file
    known_job: job_pb2.Job  # a terminal job

    @property
    def socket_path(self) -> str:
        return self.daemon.address.removeprefix("unix://")

    @property
    def blobs_dir(self) -> Path:
        return self.daemon.state_dir / "blobs"

    def log_tail(self) -> str:
        return self.daemon.log()[-4000:]


def _upload(data: data_pb2_grpc.DataServiceStub, payload: bytes, display_name: str = "d.jsonl") -> str:
    header = data_pb2.UploadHeader(
        display_name=display_name, size=len(payload), sha256=hashlib.sha256(payload).hexdigest()
    )
    chunks = [data_pb2.UploadChunk(header=header)]
    chunks += [data_pb2.UploadChunk(data=payload[i : i + 65536]) for i in range(0, len(payload), 65536)]
    response = data.Upload(iter(chunks), timeout=CALL_DEADLINE_S)
    return str(response.digest)


def _wait_terminal(jobs: job_pb2_grpc.JobServiceStub, job_id: str) -> job_pb2.Job:
    deadline = time.monotonic() + JOB_END_TIMEOUT_S
    while time.monotonic() < deadline:
        job = jobs.GetJob(job_pb2.GetJobRequest(job=job_id), timeout=CALL_DEADLINE_S)
        if job.state in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {JOB_END_TIMEOUT_S:.0f} s")


def _cancel_and_wait(jobs: job_pb2_grpc.JobServiceStub, job_id: str) -> job_pb2.Job:
    jobs.CancelJob(job_pb2.CancelJobRequest(job=job_id), timeout=CALL_DEADLINE_S)
    return _wait_terminal(jobs, job_id)


@pytest.fixture(scope="module")
def fuzz() -> Iterator[Fuzzed]:
    with contextlib.ExitStack() as cleanup:
        root = short_tmp_dir()
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        allowed = root / "allowed"
        outside = root / "outside"
        allowed.mkdir()
        outside.mkdir()
        (allowed / "escape").symlink_to(outside, target_is_directory=True)
        (allowed / "a-file").write_text("not a directory")
        daemon = start_daemon(
            root / "state", "--max-upload-mb", str(MAX_UPLOAD_MB), "--allow-output-root", str(allowed)
        )
        cleanup.callback(stop_daemon, daemon)  # also ends any worker a job started
        channel = grpc.insecure_channel(
            daemon.address,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        cleanup.callback(channel.close)
        data = data_pb2_grpc.DataServiceStub(channel)
        jobs = job_pb2_grpc.JobServiceStub(channel)
        lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:8]
        digest = _upload(data, ("\n".join(lines) + "\n").encode())
        # Builds the tokenizer once, so that fuzzed InspectData calls meet their deadline.
        data.InspectData(data_pb2.InspectDataRequest(digest=digest), timeout=WARMUP_DEADLINE_S)
        submitted = jobs.SubmitJob(
            job_pb2.SubmitJobRequest(
                request_id="fuzz-known",
                data_digest=digest,
                config_yaml=VALID_CONFIG,
                output_dir=str(allowed / "known"),
                pipeline_id="fuzz-known",
                dry_run=True,
            ),
            timeout=CALL_DEADLINE_S,
        )
        known = _cancel_and_wait(jobs, submitted.job.job_id)
        yield Fuzzed(
            daemon=daemon,
            root=root,
            allowed=allowed,
            outside=outside,
            channel=channel,
            config=config_pb2_grpc.ConfigServiceStub(channel),
            data=data,
            gpus=gpu_pb2_grpc.GpuServiceStub(channel),
            jobs=jobs,
            digest=digest,
            known_job=known,
        )


class Outcome(NamedTuple):
    code: grpc.StatusCode
    details: str
    response: Any
    error_code: str  # the daemon's cryptotune-error-code trailer; "" when absent


def _outcome(call: Callable[[], Any]) -> Outcome:
    """Runs one call and catches its status."""
    try:
        response = call()
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        trailer = dict(error.trailing_metadata() or ())
        return Outcome(
            error.code(), error.details() or "", None, str(trailer.get(ERROR_CODE_METADATA_KEY, ""))
        )
    return Outcome(grpc.StatusCode.OK, "", response, "")


def _check(
    fuzz: Fuzzed,
    what: str,
    request: object,
    call: Callable[[], Any],
    *,
    coded: bool = True,
    oversized: bool | None = None,
) -> tuple[grpc.StatusCode, Any]:
    """One call with bad input: a handled status with a message (and, from cryptotune, its error code)."""
    code, details, response, error_code = _outcome(call)

    def where() -> str:  # built only on failure: the request may be megabytes
        return f"{what}({_short(request)}) → {code.name}: {details}"

    if code not in HANDLED:
        pytest.fail(f"{where()}\n--- daemon log ---\n{fuzz.log_tail()}")
    if code is grpc.StatusCode.OK:
        return code, response
    if not details.strip() or "Traceback" in details or "Exception" in details:
        pytest.fail(f"{where()}: no message, or internals in it")
    if oversized is None:
        oversized = isinstance(request, Message) and request.ByteSize() > MAX_MESSAGE_BYTES
    if coded and not oversized and not error_code:
        # Without the trailer the status was made by the transport, not the daemon: e.g. an error
        # message too long for the trailer, which the client then drops.
        pytest.fail(f"{where()}: no {ERROR_CODE_METADATA_KEY} trailer")
    return code, response


def _assert_serving(fuzz: Fuzzed) -> None:
    assert fuzz.daemon.process.poll() is None, "the daemon exited:\n" + fuzz.log_tail()
    with grpc.insecure_channel(fuzz.daemon.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- ConfigService ---------------------------------------------------------------------------------

_section_keys = [(section, key) for section, model in SECTIONS.items() for key in model.model_fields]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _utf8_text,
    st.sampled_from(["auto", "steps", "no", "epoch", "builtin:tiny-qwen3", "data_parallel", "1e-4"]),
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(_utf8_text, st.sampled_from(list(SECTIONS))), children, max_size=4),
    ),
    max_leaves=25,
)
# Mostly-right configs: real sections and keys with random values.
_shaped = st.dictionaries(
    st.sampled_from(list(SECTIONS)),
    st.dictionaries(
        st.sampled_from([key for _, key in _section_keys] + ["lr", "epochs", "bogus"]), _scalars, max_size=6
    ),
    max_size=5,
)


def _dump(value: object, how: str) -> str:
    if how == "json":
        return json.dumps(value, ensure_ascii=False, default=str)
    return yaml.safe_dump(value, allow_unicode=True, default_flow_style=how == "flow")


_yaml_texts = st.one_of(
    TEXTS,
    st.builds(_dump, st.one_of(_documents, _shaped), st.sampled_from(["block", "flow", "json"])),
    # YAML features a config never needs: anchors and aliases, tags, several documents.
    st.sampled_from(
        [
            "a: &a [1, 2]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c, *c, *c]\n",
            "training: !!python/object:os.system {}\n",
            "training: {learning_rate: !!float nan}\n",
            "---\nmodel: {}\n---\nlora: {}\n",
            "model: {model_name: [" * 2000 + "]}" * 2000,
            "training:\n\tmax_steps: 1\n",
            "lora: {rank: 99999999999999999999999999999999999999}\n",
            "training: {seed: 2024-13-45}\n",
            "? [a, b]\n: c\n",
            "<<: *undefined\n",
        ]
    ),
)


def test_validate_config_never_fails_on_any_text(fuzz: Fuzzed) -> None:
    @_fuzz_settings(150)
    @given(text=_yaml_texts, source_name=TEXTS)
    def run(text: str, source_name: str) -> None:
        request = config_pb2.ValidateConfigRequest(text=text, source_name=source_name)
        code, response = _check(
            fuzz,
            "ValidateConfig",
            request,
            lambda: fuzz.config.ValidateConfig(request, timeout=CALL_DEADLINE_S),
        )
        if request.ByteSize() > MAX_MESSAGE_BYTES or len(text.encode()) > MAX_CONFIG_BYTES:
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, _short(text))
            return
        assert code is grpc.StatusCode.OK, (code, _short(text))
        assert response.valid == (len(response.errors) == 0), response
        assert all(issue.message for issue in [*response.errors, *response.warnings])

    run()
    _assert_serving(fuzz)


def test_a_slow_config_validation_does_not_hold_up_other_calls(fuzz: Fuzzed) -> None:
    # 45,000 unknown keys (just under the 1 MiB config limit): the most validation work a request can ask.
    heavy = "training:\n" + "".join(f"  bogus_key_{i}: 1\n" for i in range(45_000))
    replies: list[Outcome] = []
    worker = threading.Thread(
        target=lambda: replies.append(
            _outcome(
                lambda: fuzz.config.ValidateConfig(config_pb2.ValidateConfigRequest(text=heavy), timeout=120)
            )
        ),
        daemon=True,
    )
    answered = 0  # calls answered while the validation ran: it does not hold the daemon up
    worker.start()
    try:
        while worker.is_alive() and answered < 200:
            fuzz.config.GetTemplate(config_pb2.GetTemplateRequest(), timeout=10)
            answered += 1
            time.sleep(0.02)
    finally:
        worker.join(timeout=130)
    assert not worker.is_alive() and len(replies) == 1
    code, details, response, _ = replies[0]
    assert code is grpc.StatusCode.OK, (code, details)
    assert not response.valid and len(response.errors) == 101, len(response.errors)
    assert "44900 more errors not listed" in response.errors[-1].message, response.errors[-1]
    assert answered >= 3, "the validation was too quick to overlap other calls"


def test_template_schema_and_gpus_answer(fuzz: Fuzzed) -> None:
    template = fuzz.config.GetTemplate(config_pb2.GetTemplateRequest(), timeout=CALL_DEADLINE_S)
    checked = fuzz.config.ValidateConfig(
        config_pb2.ValidateConfigRequest(text=template.yaml), timeout=CALL_DEADLINE_S
    )
    assert checked.valid, checked.errors
    schema = fuzz.config.GetJsonSchema(config_pb2.GetJsonSchemaRequest(), timeout=CALL_DEADLINE_S)
    assert json.loads(schema.json)["type"] == "object"
    assert fuzz.gpus.ListGpus(gpu_pb2.ListGpusRequest(), timeout=CALL_DEADLINE_S).recommendation.strategy
    valid = fuzz.config.ValidateConfig(
        config_pb2.ValidateConfigRequest(text=VALID_CONFIG), timeout=CALL_DEADLINE_S
    )
    assert valid.valid, valid.errors


# -- raw bytes: messages that are not valid protobuf at all ---------------------------------------

_UNARY_METHODS = [
    "/cryptotune.proto.v1.ConfigService/GetTemplate",
    "/cryptotune.proto.v1.ConfigService/ValidateConfig",
    "/cryptotune.proto.v1.ConfigService/GetJsonSchema",
    "/cryptotune.proto.v1.DataService/StatBlob",
    "/cryptotune.proto.v1.DataService/InspectData",
    "/cryptotune.proto.v1.GpuService/ListGpus",
    "/cryptotune.proto.v1.JobService/SubmitJob",
    "/cryptotune.proto.v1.JobService/GetJob",
    "/cryptotune.proto.v1.JobService/ListJobs",
    "/cryptotune.proto.v1.JobService/CancelJob",
    "/grpc.health.v1.Health/Check",
]
_SERVER_STREAMING_METHODS = [
    "/cryptotune.proto.v1.JobService/WatchJob",
    "/cryptotune.proto.v1.JobService/StreamLogs",
    "/cryptotune.proto.v1.JobService/ExportJob",
]
# Bytes that are never a valid message: a truncated varint, bad wire types, a truncated string.
_CORRUPT = [b"\x08", b"\xff\xff\xff", b"\x0f", b"\x0a\x05ab"]
# Field 1 is a string in these requests: invalid UTF-8 there does not decode either.
_STRING_FIELD_METHODS = [
    "/cryptotune.proto.v1.ConfigService/ValidateConfig",
    "/cryptotune.proto.v1.DataService/StatBlob",
    "/cryptotune.proto.v1.JobService/GetJob",
    "/cryptotune.proto.v1.JobService/SubmitJob",
]


def test_undecodable_messages_are_invalid_argument(fuzz: Fuzzed) -> None:
    for method in _UNARY_METHODS:
        for raw in _CORRUPT:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = fuzz.channel.unary_unary(method)
            code, details, _, _ = _outcome(lambda: call(raw, timeout=CALL_DEADLINE_S))  # noqa: B023
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, raw, code, details)
            assert "DecodeError" not in details and "could not be decoded" in details, details
    for method in _STRING_FIELD_METHODS:
        strings: grpc.UnaryUnaryMultiCallable[bytes, bytes] = fuzz.channel.unary_unary(method)
        code, details, _, _ = _outcome(lambda: strings(b"\x0a\x02\xff\xfe", timeout=CALL_DEADLINE_S))  # noqa: B023
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
    for method in _SERVER_STREAMING_METHODS:
        stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = fuzz.channel.unary_stream(method)
        code, details, _, _ = _outcome(lambda: list(stream(b"\xff\xff", timeout=CALL_DEADLINE_S)))  # noqa: B023
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
    upload: grpc.StreamUnaryMultiCallable[bytes, bytes] = fuzz.channel.stream_unary(
        "/cryptotune.proto.v1.DataService/Upload"
    )
    header = data_pb2.UploadChunk(header=data_pb2.UploadHeader(size=2)).SerializeToString()
    for chunks in ([b"\xff\xff"], [header, b"\xff\xff"], [header, b"\x12\x02ab", b"\x08"]):
        code, details, _, _ = _outcome(lambda: upload(iter(chunks), timeout=CALL_DEADLINE_S))  # noqa: B023
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (chunks, code, details)
    reflection: grpc.StreamStreamMultiCallable[bytes, bytes] = fuzz.channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
    code, details, _, _ = _outcome(lambda: list(reflection(iter([b"\xff\xff"]), timeout=CALL_DEADLINE_S)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    _assert_serving(fuzz)


def test_random_bytes_to_every_method(fuzz: Fuzzed) -> None:
    methods = st.sampled_from(_UNARY_METHODS + _SERVER_STREAMING_METHODS)

    @_fuzz_settings(200)
    @given(method=methods, raw=st.binary(max_size=300))
    def run(method: str, raw: bytes) -> None:
        if method in _SERVER_STREAMING_METHODS:
            stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = fuzz.channel.unary_stream(method)
            _check(fuzz, method, raw, lambda: list(stream(raw, timeout=CALL_DEADLINE_S)))
        else:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = fuzz.channel.unary_unary(method)
            coded = not method.startswith("/grpc.")  # health answers NOT_FOUND for unknown services
            code, _ = _check(fuzz, method, raw, lambda: call(raw, timeout=CALL_DEADLINE_S), coded=coded)
            assert not (method.endswith("/SubmitJob") and code is grpc.StatusCode.OK), "no real digest"

    run()
    _assert_serving(fuzz)


# -- DataService -----------------------------------------------------------------------------------


def test_stat_blob_fuzz(fuzz: Fuzzed) -> None:
    @_fuzz_settings(80)
    @given(digest=st.one_of(HEX_DIGEST, JUNK_DIGESTS, TEXTS, st.just(fuzz.digest)))
    def run(digest: str) -> None:
        request = data_pb2.StatBlobRequest(digest=digest)
        code, response = _check(
            fuzz, "StatBlob", request, lambda: fuzz.data.StatBlob(request, timeout=CALL_DEADLINE_S)
        )
        if request.ByteSize() > MAX_MESSAGE_BYTES:
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        elif DIGEST_RE.fullmatch(digest):
            assert code is grpc.StatusCode.OK
            assert response.exists == (digest == fuzz.digest)
        else:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (_short(digest), code)

    run()
    _assert_serving(fuzz)


_FORMATS = st.one_of(st.sampled_from(["", "json", "jsonl", "JSON", "csv", "json\x00"]), SMALL_TEXTS)
_MODELS = st.one_of(
    st.sampled_from(
        [
            "",
            "builtin:tiny-qwen3",
            "builtin:nope",
            "Qwen/Qwen3-0.6B",
            "nobody/nothing",
            "/",
            "/etc",
            "/proc/self",
            "/nonexistent/model",
            "../../etc",
            "a\x00b",
            "/" + "a" * 5000,
            "a" * 300,
        ]
    ),
    TEXTS,
)


def test_inspect_data_fuzz(fuzz: Fuzzed) -> None:
    @_fuzz_settings(80)
    @given(
        digest=st.one_of(st.just(fuzz.digest), HEX_DIGEST, JUNK_DIGESTS),
        display_name=TEXTS,
        file_format=_FORMATS,
        sample=INT32,
        max_seq_length=INT32,
        model=_MODELS,
    )
    def run(
        digest: str, display_name: str, file_format: str, sample: int, max_seq_length: int, model: str
    ) -> None:
        request = data_pb2.InspectDataRequest(
            digest=digest,
            display_name=display_name,
            format=file_format,
            sample=sample,
            max_seq_length=max_seq_length,
            model=model,
        )
        code, response = _check(
            fuzz, "InspectData", request, lambda: fuzz.data.InspectData(request, timeout=CALL_DEADLINE_S)
        )
        if code is grpc.StatusCode.OK:
            assert response.records_total == 8
            assert len(response.samples) <= sample
        if request.ByteSize() > MAX_MESSAGE_BYTES:
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        elif not DIGEST_RE.fullmatch(digest) or sample < 0 or max_seq_length < 0:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, _short(request))

    run()
    _assert_serving(fuzz)


def test_inspect_data_parameters_are_checked_before_use(fuzz: Fuzzed) -> None:
    invalid, unavailable = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    cases: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
        ({"model": "a\x00b"}, invalid, "NUL byte"),
        ({"model": "/" + "a" * 5000}, invalid, "longer than 4096 bytes"),
        ({"model": "a" * 300}, invalid, "longer than 255 bytes"),
        ({"model": "/tmp/" + "a" * 300 + "/x"}, invalid, "longer than 255 bytes"),
        ({"model": "a" * 200}, unavailable, "neither a local directory nor a Hugging Face id"),
        ({"model": "/etc"}, unavailable, "has no tokenizer files"),
        ({"model": "nobody/nothing"}, unavailable, "never downloads"),
        ({"model": "builtin:nope"}, unavailable, "builtin:tiny-qwen3"),
        ({"format": "csv"}, invalid, "format must be 'json' or 'jsonl'"),
        ({"format": "x" * 100_000}, invalid, "(100000 characters)"),
        ({"sample": -1}, invalid, "sample must be between 0 and 1000"),
        ({"sample": 2**31 - 1}, invalid, "sample must be between 0 and 1000"),
        ({"max_seq_length": -5}, invalid, "max_seq_length must be between 0 and 131072"),
        ({"max_seq_length": 2**31 - 1}, invalid, "max_seq_length must be between 0 and 131072"),
        ({"digest": fuzz.digest.upper()}, invalid, "64 lower-case hex digits"),
        ({"digest": "0" * 64}, grpc.StatusCode.NOT_FOUND, "upload it first"),
        ({"max_seq_length": 131_072, "sample": 1000, "display_name": "../../x\x00"}, grpc.StatusCode.OK, ""),
    ]
    for fields, expected, words in cases:
        request = data_pb2.InspectDataRequest(**{"digest": fuzz.digest, **fields})
        code, details, response, error_code = _outcome(
            lambda: fuzz.data.InspectData(request, timeout=CALL_DEADLINE_S)  # noqa: B023
        )
        assert code is expected and words in details, (_short(fields), code, details)
        if code is grpc.StatusCode.OK:
            assert response.records_total == 8 and len(response.samples) == 8
        else:
            assert error_code, (_short(fields), details)


@dataclass(frozen=True)
class UploadCase:
    mode: str
    payload: bytes
    chunks: list[data_pb2.UploadChunk]


def _header(display_name: str, size: int, sha256: str) -> data_pb2.UploadChunk:
    return data_pb2.UploadChunk(
        header=data_pb2.UploadHeader(display_name=display_name, size=size, sha256=sha256)
    )


def _pieces(payload: bytes, cuts: list[int]) -> list[data_pb2.UploadChunk]:
    points = sorted({0, len(payload), *(c % (len(payload) + 1) for c in cuts)})
    return [data_pb2.UploadChunk(data=payload[a:b]) for a, b in itertools.pairwise(points)]


@st.composite
def upload_cases(draw: st.DrawFn) -> UploadCase:
    mode = draw(
        st.sampled_from(["ok", "no_header", "two_headers", "wrong_sha", "wrong_size", "empty", "random"])
    )
    payload = draw(st.binary(max_size=3000))
    name = draw(SMALL_TEXTS)
    sha = hashlib.sha256(payload).hexdigest()
    body = _pieces(payload, draw(st.lists(st.integers(min_value=0), max_size=4)))
    if mode == "ok":
        size = draw(st.sampled_from([len(payload), 0]))
        return UploadCase(mode, payload, [_header(name, size, draw(st.sampled_from([sha, ""]))), *body])
    if mode == "no_header":
        return UploadCase(mode, payload, body or [data_pb2.UploadChunk(data=b"")])
    if mode == "two_headers":
        head = _header(name, len(payload), sha)
        return UploadCase(mode, payload, [head, *body[:1], head, *body[1:]])
    if mode == "wrong_sha":
        other = draw(HEX_DIGEST.filter(lambda d: d != sha))
        return UploadCase(mode, payload, [_header(name, len(payload), other), *body])
    if mode == "wrong_size":
        size = draw(INT64.filter(lambda s: s not in (0, len(payload))))
        return UploadCase(mode, payload, [_header(name, size, sha), *body])
    if mode == "empty":
        return UploadCase(mode, payload, [])
    chunk = st.one_of(
        st.builds(_header, TEXTS, INT64, st.one_of(HEX_DIGEST, JUNK_DIGESTS, st.just(sha))),
        st.builds(lambda data: data_pb2.UploadChunk(data=data), st.binary(max_size=2000)),
        st.just(data_pb2.UploadChunk()),
    )
    return UploadCase(mode, payload, draw(st.lists(chunk, max_size=6)))


def test_upload_fuzz(fuzz: Fuzzed) -> None:
    @_fuzz_settings(120)
    @given(case=upload_cases())
    def run(case: UploadCase) -> None:
        code, response = _check(
            fuzz,
            "Upload",
            case,
            lambda: fuzz.data.Upload(iter(case.chunks), timeout=CALL_DEADLINE_S),
            oversized=any(chunk.ByteSize() > MAX_MESSAGE_BYTES for chunk in case.chunks),
        )
        if case.mode == "ok":
            assert code is grpc.StatusCode.OK
            digest = hashlib.sha256(case.payload).hexdigest()
            assert response.digest == digest and response.size == len(case.payload)
            assert (fuzz.blobs_dir / digest[:2] / digest).read_bytes() == case.payload
        elif case.mode == "wrong_size":
            size = case.chunks[0].header.size
            expected = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if size > MAX_UPLOAD_BYTES
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            assert code is expected, (code, size)
        elif case.mode != "random":
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (case.mode, code)
        assert list((fuzz.blobs_dir / "tmp").iterdir()) == [], "a refused upload left its temporary file"

    run()
    _assert_serving(fuzz)


_json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.floats(allow_nan=False),
        _utf8_text,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["instruction", "input", "output", "thinking", "difficulty"]), _utf8_text
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)
_records = st.fixed_dictionaries(
    {"instruction": _utf8_text, "output": _utf8_text},
    optional={"input": _json_values, "thinking": _json_values, "difficulty": _json_values},
)


def _data_file(values: list[Any], how: str, junk: bytes) -> bytes:
    if how == "json":
        return json.dumps(values, ensure_ascii=False).encode()
    if how == "jsonl":
        return "\n".join(json.dumps(v, ensure_ascii=False) for v in values).encode()
    if how == "bom":
        return b"\xef\xbb\xbf" + "\n".join(json.dumps(v) for v in values).encode()
    return junk


def test_random_data_files_inspect_to_a_report_or_invalid_argument(fuzz: Fuzzed) -> None:
    @_fuzz_settings(60)
    @given(
        values=st.lists(st.one_of(_records, _json_values), max_size=6),
        how=st.sampled_from(["json", "jsonl", "bom", "bytes"]),
        junk=st.binary(max_size=500),
        file_format=st.sampled_from(["", "json", "jsonl"]),
    )
    def run(values: list[Any], how: str, junk: bytes, file_format: str) -> None:
        payload = _data_file(values, how, junk)
        digest = _upload(fuzz.data, payload)
        request = data_pb2.InspectDataRequest(digest=digest, format=file_format, sample=2)
        code, response = _check(
            fuzz, "InspectData", request, lambda: fuzz.data.InspectData(request, timeout=CALL_DEADLINE_S)
        )
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, _short(payload))
        if code is grpc.StatusCode.OK:
            assert response.records_valid + response.records_invalid == response.records_total

    run()
    _assert_serving(fuzz)


# -- JobService ------------------------------------------------------------------------------------


def test_submit_job_fuzz(fuzz: Fuzzed) -> None:
    allowed = fuzz.allowed
    fresh = st.uuids().map(lambda u: u.hex[:12])
    valid = {
        "request_id": fresh,
        "data_digest": st.just(fuzz.digest),
        "data_name": st.just("d.jsonl"),
        "config_yaml": st.just(VALID_CONFIG),
        "config_name": st.just("c.yaml"),
        "output_dir": fresh.map(lambda name: str(allowed / f"run-{name}")),
        "pipeline_id": st.one_of(st.just(""), fresh.map(lambda name: f"fz-{name}")),
        "resume": st.just(""),
    }
    junk = {
        "request_id": st.one_of(st.just(""), st.just("x" * 129), SMALL_TEXTS),
        "data_digest": st.one_of(HEX_DIGEST, JUNK_DIGESTS),
        "data_name": TEXTS,
        "config_yaml": st.one_of(
            st.sampled_from(
                [
                    "",
                    VALID_CONFIG.replace("trust_remote_code: false", "trust_remote_code: true"),
                    VALID_CONFIG.replace("data_parallel", "model_parallel"),
                    VALID_CONFIG.replace(
                        "world_size: 1\n  enable_distributed: false",
                        "world_size: 64\n  enable_distributed: true",
                    ),
                    VALID_CONFIG.replace("builtin:tiny-qwen3", "/nonexistent/model\x00"),
                    VALID_CONFIG + "#" * (MAX_CONFIG_BYTES + 10),
                ]
            ),
            _yaml_texts,
        ),
        "config_name": TEXTS,
        "output_dir": st.one_of(
            st.sampled_from(
                [
                    "",
                    "relative/run",
                    str(allowed / "escape" / "run"),
                    f"{allowed}/../outside/run",
                    f"{allowed}/..",
                    str(allowed),
                    str(allowed / "a-file"),
                    str(allowed / "known"),
                    f"{allowed}/nul\x00byte",
                    f"{allowed}/" + "a" * 300,
                    f"{allowed}/" + "a/" * 2100,
                    "/etc",
                    "/proc/self",
                    "/",
                ]
            ),
            TEXTS,
        ),
        "pipeline_id": st.one_of(
            st.sampled_from(["fuzz-known", "..", ".", "bad/id", "a" * 65, "ünï", "a b", "ok\n", "a\x00"]),
            SMALL_TEXTS,
        ),
        "resume": st.one_of(
            st.sampled_from(
                ["fuzz-known", "fuzz-known@3", "fuzz-known@" + "9" * 5000, "fuzz-known@-1", "@", "a@b@c"]
            ),
            SMALL_TEXTS,
        ),
    }

    @st.composite
    def requests(draw: st.DrawFn) -> job_pb2.SubmitJobRequest:
        # Mostly valid requests with one to three fields fuzzed, so each check is reached.
        fuzzed = draw(st.sets(st.sampled_from(sorted(junk)), min_size=1, max_size=3))
        fields = {name: draw(junk[name] if name in fuzzed else valid[name]) for name in sorted(valid)}
        return job_pb2.SubmitJobRequest(**fields, dry_run=True)

    @_fuzz_settings(40)
    @given(request=requests())
    def run(request: job_pb2.SubmitJobRequest) -> None:
        code, response = _check(
            fuzz, "SubmitJob", request, lambda: fuzz.jobs.SubmitJob(request, timeout=CALL_DEADLINE_S)
        )
        if code is grpc.StatusCode.OK:
            # Every accepted job ends before the next example: the machine is never flooded.
            ended = _cancel_and_wait(fuzz.jobs, response.job.job_id)
            assert ended.dry_run and ended.state in TERMINAL, ended
            return
        if len(request.config_yaml.encode()) > MAX_CONFIG_BYTES and request.ByteSize() <= MAX_MESSAGE_BYTES:
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, _short(request))

    run()
    _assert_serving(fuzz)


def test_output_dirs_and_pipeline_ids_are_validated(fuzz: Fuzzed) -> None:
    allowed = fuzz.allowed

    def submit(**fields: Any) -> tuple[grpc.StatusCode, str]:
        defaults = {
            "request_id": uuid.uuid4().hex,
            "data_digest": fuzz.digest,
            "config_yaml": VALID_CONFIG,
            "dry_run": True,
            "output_dir": str(allowed / "ok-dir"),
        }
        request = job_pb2.SubmitJobRequest(**{**defaults, **fields})
        code, details, response, _ = _outcome(lambda: fuzz.jobs.SubmitJob(request, timeout=CALL_DEADLINE_S))
        if response is not None:
            _cancel_and_wait(fuzz.jobs, response.job.job_id)
        return code, details

    denied, invalid = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT
    cases: list[tuple[str, grpc.StatusCode, str]] = [
        (str(allowed / "escape" / "run"), denied, "outside the daemon's allowed roots"),
        (str(allowed / "escape"), denied, "outside the daemon's allowed roots"),
        ("relative/run", invalid, "must be an absolute path"),
        ("run", invalid, "must be an absolute path"),
        ("../run", invalid, "must be an absolute path"),
        (f"{allowed}/../outside/run", denied, "outside the daemon's allowed roots"),
        (f"{allowed}/..", denied, "outside the daemon's allowed roots"),
        (f"{allowed}/sub/../../outside", denied, "outside the daemon's allowed roots"),
        ("", invalid, "output_dir is required"),
        (str(allowed / "a-file"), invalid, "is not a directory"),
        (f"{allowed}/nul\x00byte", invalid, "NUL"),
        (f"{allowed}/" + "a" * 300, invalid, "255"),
        (f"{allowed}/" + "a/" * 2100, invalid, "4096"),
        ("/etc", denied, "outside the daemon's allowed roots"),
    ]
    for output_dir, expected, words in cases:
        code, details = submit(output_dir=output_dir)
        assert code is expected and words in details, (_short(output_dir), code, details)
    for pipeline_id in ("..", ".", "bad/id", "a" * 65, "ünï", "a b", "ok\n", "a\x00", "../x"):
        code, details = submit(pipeline_id=pipeline_id, output_dir=str(allowed / "p-dir"))
        assert code is invalid and "[A-Za-z0-9._-]{1,64}" in details, (pipeline_id, code, details)
    for resume in ("fuzz-known@" + "9" * 5000, "fuzz-known@-1", "@", "a@b@c", "../x", "fuzz-known@１"):
        code, details = submit(resume=resume)
        assert code is invalid and "PIPELINE_ID@STEP" in details, (_short(resume), code, details)
    # Thousands of errors make a long message: it is cut, and still arrives with its status and code.
    many_errors = "training:\n" + "".join(f"  bogus_key_{i}: 1\n" for i in range(3000))
    code, details, _, error_code = _outcome(
        lambda: fuzz.jobs.SubmitJob(
            job_pb2.SubmitJobRequest(
                request_id=uuid.uuid4().hex,
                data_digest=fuzz.digest,
                config_yaml=many_errors,
                output_dir=str(allowed / "many"),
                dry_run=True,
            ),
            timeout=CALL_DEADLINE_S,
        )
    )
    assert code is invalid and error_code == "config.invalid", (code, details[:200])
    assert "bogus_key_0" in details and details.endswith("(message truncated)"), details[-200:]
    oversized = VALID_CONFIG + "#" * MAX_CONFIG_BYTES
    code, details = submit(config_yaml=oversized, output_dir=str(allowed / "big"))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "1024 KiB" in details, (code, details)
    assert not (fuzz.outside / "run").exists()


def _job_refs(fuzz: Fuzzed) -> st.SearchStrategy[str]:
    known = fuzz.known_job
    return st.one_of(
        st.sampled_from([known.job_id, known.pipeline_id, known.output_dir, known.output_dir + "/"]),
        st.sampled_from(["/", "/tmp", "/nonexistent", "/a\x00b", "/" + "a" * 5000, "/" + "a/" * 3000]),
        TEXTS,
    )


def test_job_refs_fuzz(fuzz: Fuzzed) -> None:
    known = fuzz.known_job

    @_fuzz_settings(150)
    @given(
        method=st.sampled_from(["GetJob", "CancelJob", "WatchJob", "StreamLogs", "ExportJob", "ListJobs"]),
        ref=_job_refs(fuzz),
        after_seq=INT64,
        follow=st.booleans(),
        limit=INT32,
    )
    def run(method: str, ref: str, after_seq: int, follow: bool, limit: int) -> None:
        jobs = fuzz.jobs
        request: Any
        call: Callable[[], Any]
        if method == "GetJob":
            request = job_pb2.GetJobRequest(job=ref)
            call = lambda: jobs.GetJob(request, timeout=CALL_DEADLINE_S)  # noqa: E731
        elif method == "CancelJob":
            request = job_pb2.CancelJobRequest(job=ref)
            call = lambda: jobs.CancelJob(request, timeout=CALL_DEADLINE_S)  # noqa: E731
        elif method == "WatchJob":
            request = job_pb2.WatchJobRequest(job=ref, after_seq=after_seq)
            call = lambda: list(jobs.WatchJob(request, timeout=CALL_DEADLINE_S))  # noqa: E731
        elif method == "StreamLogs":
            request = job_pb2.StreamLogsRequest(job=ref, follow=follow)
            call = lambda: list(jobs.StreamLogs(request, timeout=CALL_DEADLINE_S))  # noqa: E731
        elif method == "ExportJob":
            request = job_pb2.ExportJobRequest(job=ref)
            call = lambda: list(jobs.ExportJob(request, timeout=CALL_DEADLINE_S))  # noqa: E731
        else:
            request = job_pb2.ListJobsRequest(limit=limit)
            call = lambda: jobs.ListJobs(request, timeout=CALL_DEADLINE_S)  # noqa: E731
        code, response = _check(fuzz, method, request, call)
        if method == "ListJobs":
            expected = grpc.StatusCode.OK if 0 <= limit <= 1000 else grpc.StatusCode.INVALID_ARGUMENT
            assert code is expected, (limit, code)
            if code is grpc.StatusCode.OK:
                assert len(response.jobs) <= (limit or 50)
            return
        if request.ByteSize() > MAX_MESSAGE_BYTES:
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        elif ref in (known.job_id, known.pipeline_id):
            if method == "WatchJob":
                expected = grpc.StatusCode.OK if after_seq >= 0 else grpc.StatusCode.INVALID_ARGUMENT
            elif method == "ExportJob":
                expected = grpc.StatusCode.FAILED_PRECONDITION  # cancelled dry run: nothing to export
            else:
                expected = grpc.StatusCode.OK
            assert code is expected, (method, code)
        elif ref == "" or "\x00" in ref:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, _short(ref), code)

    run()
    _assert_serving(fuzz)


# -- sizes -----------------------------------------------------------------------------------------


def test_oversized_messages_and_uploads_are_resource_exhausted(fuzz: Fuzzed) -> None:
    too_big = config_pb2.ValidateConfigRequest(text="a" * (MAX_MESSAGE_BYTES + 1024))
    code, details, _, _ = _outcome(lambda: fuzz.config.ValidateConfig(too_big, timeout=CALL_DEADLINE_S))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)

    big_config = config_pb2.ValidateConfigRequest(text=VALID_CONFIG + "#" * MAX_CONFIG_BYTES)
    code, details, _, _ = _outcome(lambda: fuzz.config.ValidateConfig(big_config, timeout=CALL_DEADLINE_S))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "1024 KiB" in details, (code, details)

    payload = os.urandom(MAX_UPLOAD_BYTES + 1)
    sha = hashlib.sha256(payload).hexdigest()
    body = _pieces(payload, list(range(0, len(payload), 256 * 1024)))
    for announced in (len(payload), 0):
        chunks = [_header("big.jsonl", announced, sha), *body]
        code, details, _, _ = _outcome(lambda: fuzz.data.Upload(iter(chunks), timeout=CALL_DEADLINE_S))  # noqa: B023
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (announced, code, details)
        assert "--max-upload-mb" in details and f"{MAX_UPLOAD_MB} MiB" in details, details
    # One data message over the gRPC message cap is refused before the daemon reads it.
    huge_chunk = [_header("huge", 0, ""), data_pb2.UploadChunk(data=b"x" * (MAX_MESSAGE_BYTES + 1))]
    code, details, _, _ = _outcome(lambda: fuzz.data.Upload(iter(huge_chunk), timeout=CALL_DEADLINE_S))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    exactly = os.urandom(MAX_UPLOAD_BYTES)
    assert _upload(fuzz.data, exactly) == hashlib.sha256(exactly).hexdigest()
    assert not (fuzz.blobs_dir / sha[:2] / sha).exists()
    assert list((fuzz.blobs_dir / "tmp").iterdir()) == []
    _assert_serving(fuzz)


def test_an_abandoned_upload_leaves_nothing_behind(fuzz: Fuzzed) -> None:
    tmp = fuzz.blobs_dir / "tmp"
    release = threading.Event()

    def chunks() -> Iterator[data_pb2.UploadChunk]:
        yield _header("partial.jsonl", 1000, "")
        yield data_pb2.UploadChunk(data=b"x" * 100)
        release.wait(15)  # the client gives up meanwhile

    future = fuzz.data.Upload.future(chunks(), timeout=CALL_DEADLINE_S)
    try:
        deadline = time.monotonic() + 10
        while not any(tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(tmp.iterdir()), "the upload never reached the daemon"
        future.cancel()
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while any(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp.iterdir()) == [], "a cancelled upload left its temporary file"
    _assert_serving(fuzz)


# -- storage paths ---------------------------------------------------------------------------------


def _files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_upload_display_name_never_chooses_the_storage_path(fuzz: Fuzzed) -> None:
    marker = f"ct-evil-{uuid.uuid4().hex[:8]}"
    names = [
        "../../etc/passwd",
        f"../../../../../../tmp/{marker}",
        f"/tmp/{marker}",
        f"../../{marker}",
        f"blobs/../../{marker}",
        "..",
        "/",
        "a\x00b",
        "C:\\Windows\\evil",
        "~/.bashrc",
        "a" * 5000,
    ]
    before = _files_under(fuzz.root)
    expected: set[Path] = set()
    for index, name in enumerate(names):
        payload = f"payload {index} for {name[:40]!r}\n".encode()
        digest = _upload(fuzz.data, payload, display_name=name)
        assert digest == hashlib.sha256(payload).hexdigest()
        stored = fuzz.blobs_dir / digest[:2] / digest
        assert stored.read_bytes() == payload
        expected.add(stored.relative_to(fuzz.root))
    created = {p for p in _files_under(fuzz.root) - before if not p.name.startswith("jobs.sqlite3")}
    assert created == expected
    assert not Path("/tmp", marker).exists()
    assert not (fuzz.root / marker).exists() and not (fuzz.daemon.state_dir / marker).exists()


# -- the socket itself -----------------------------------------------------------------------------

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            continue
    return False


def _keep_calling(address: str, stop: threading.Event, outcomes: list[tuple[str, grpc.StatusCode]]) -> None:
    """A normal client: one long-lived channel, and a fresh channel per round."""
    with grpc.insecure_channel(address) as persistent:
        config = config_pb2_grpc.ConfigServiceStub(persistent)
        while not stop.is_set():
            code, _, _, _ = _outcome(lambda: config.GetTemplate(config_pb2.GetTemplateRequest(), timeout=10))
            outcomes.append(("persistent", code))
            with grpc.insecure_channel(address) as fresh:
                health = health_pb2_grpc.HealthStub(fresh)
                code, _, _, _ = _outcome(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10))  # noqa: B023
            outcomes.append(("fresh", code))
            stop.wait(0.05)


def test_garbage_and_half_open_connections_do_not_disturb_other_clients(fuzz: Fuzzed) -> None:
    rng = random.Random(20261127)
    outcomes: list[tuple[str, grpc.StatusCode]] = []
    stop = threading.Event()
    caller = threading.Thread(target=_keep_calling, args=(fuzz.daemon.address, stop, outcomes), daemon=True)
    held: list[socket.socket] = []
    caller.start()
    try:
        # Half-open: a partial preface, then silence, never reading.
        for cut in (1, 5, len(HTTP2_PREFACE) - 1):
            for _ in range(10):
                sock = _connect(fuzz.socket_path)
                sock.sendall(HTTP2_PREFACE[:cut])
                held.append(sock)
        # Connected and silent.
        held.extend(_connect(fuzz.socket_path) for _ in range(10))
        # The preface, then a frame header announcing 16 MiB that never comes.
        sock = _connect(fuzz.socket_path)
        sock.sendall(
            HTTP2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01"
        )
        held.append(sock)
        # Garbage: the daemon must drop each such connection.
        garbage: list[socket.socket] = []
        for index in range(20):
            noise = rng.randbytes(rng.randint(len(HTTP2_PREFACE), 4096))
            if noise.startswith(b"P"):
                noise = b"X" + noise[1:]
            if index % 4 == 0:
                noise = HTTP2_PREFACE + noise  # garbage frames after a valid preface
            sock = _connect(fuzz.socket_path)
            sock.sendall(noise)
            garbage.append(sock)
        for sock in garbage:
            assert _closed_by_peer(sock, within_s=15), "the daemon kept a garbage connection open"
            sock.close()
        time.sleep(2.0)  # the normal client keeps calling while the half-open connections are held
    finally:
        for sock in held:
            sock.close()
        stop.set()
        caller.join(timeout=30)
    assert not caller.is_alive(), "the normal client hung"
    assert len(outcomes) >= 4, outcomes
    failed = [o for o in outcomes if o[1] is not grpc.StatusCode.OK]
    assert not failed, failed  # a call slower than its 10 s deadline fails too
    _assert_serving(fuzz)


def test_reflection_and_health_still_work(fuzz: Fuzzed) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(fuzz.channel)
    replies = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
    )
    names = {service.name for service in replies[0].list_services_response.service}
    assert "cryptotune.proto.v1.JobService" in names and "grpc.health.v1.Health" in names
    _assert_serving(fuzz)
