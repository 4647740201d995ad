"""The Python SDK: a typed client for the cryptotune daemon."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from cryptotune import _convert
from cryptotune import types as t
from cryptotune._lazy import LazyModule
from cryptotune.errors import CryptotuneError, DaemonUnavailable, InvalidArgument, from_rpc_error
from cryptotune.paths import TOKEN_ENV, default_address, default_state_dir, expand_home

if TYPE_CHECKING:
    from cryptotune.proto.v1 import (
        config_pb2,
        config_pb2_grpc,
        dashboard_pb2,
        dashboard_pb2_grpc,
        data_pb2,
        data_pb2_grpc,
        gpu_pb2,
        gpu_pb2_grpc,
        job_pb2,
        job_pb2_grpc,
    )
else:  # the generated code of one service is imported when that service is first called
    config_pb2 = LazyModule("cryptotune.proto.v1.config_pb2")
    config_pb2_grpc = LazyModule("cryptotune.proto.v1.config_pb2_grpc")
    dashboard_pb2 = LazyModule("cryptotune.proto.v1.dashboard_pb2")
    dashboard_pb2_grpc = LazyModule("cryptotune.proto.v1.dashboard_pb2_grpc")
    data_pb2 = LazyModule("cryptotune.proto.v1.data_pb2")
    data_pb2_grpc = LazyModule("cryptotune.proto.v1.data_pb2_grpc")
    gpu_pb2 = LazyModule("cryptotune.proto.v1.gpu_pb2")
    gpu_pb2_grpc = LazyModule("cryptotune.proto.v1.gpu_pb2_grpc")
    job_pb2 = LazyModule("cryptotune.proto.v1.job_pb2")
    job_pb2_grpc = LazyModule("cryptotune.proto.v1.job_pb2_grpc")

UPLOAD_CHUNK_BYTES = 1024 * 1024
# Generous but bounded: inspection of a 100k-record file tokenises everything.
DEFAULT_TIMEOUT_S = 600.0
_T = TypeVar("_T")
_S = TypeVar("_S")

ProgressCallback = Callable[[int, int], None]


# hashlib, ipaddress and uuid are imported where used: a CLI command that needs none of them
# (list-gpus, status) should not pay for them.


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(address: str) -> str:
    target = address.split("://", 1)[-1]
    if target.startswith("["):
        return target[1 : target.index("]")]
    return target.rsplit(":", 1)[0]


def _local_token(address: str) -> str | None:
    """The local daemon's token file, for a TCP loopback address, when this user may read it."""
    if address.startswith("unix:") or not _is_loopback(_host_of(address)):
        return None
    try:
        return (default_state_dir() / "auth_token").read_text().strip() or None
    except OSError:
        return None


def _sha256_of(path: Path) -> tuple[str, int]:
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(UPLOAD_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class Client:
    """A connection to a cryptotune daemon.

    Args:
        address: ``unix:///path/to.sock`` or ``host:port``; defaults to ``$CRYPTOTUNE_ADDRESS`` or
            the local user daemon's socket.
        token: bearer token for TCP listeners; defaults to ``$CRYPTOTUNE_TOKEN``.
        tls_ca: PEM file of the CA that signed the daemon's certificate (TLS listeners).
        tls_cert: client certificate (PEM) for daemons that require mutual TLS.
        tls_key: the client certificate's private key (PEM).
        timeout: per-call deadline in seconds for unary calls.

    Example:
        >>> from cryptotune import Client
        >>> with Client() as client:
        ...     print(client.list_gpus().recommendation)
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.address = address or default_address()
        self._token = token if token is not None else os.environ.get(TOKEN_ENV) or _local_token(self.address)
        self._timeout = timeout
        self._tls = (tls_ca, tls_cert, tls_key)
        self._connect()

    def _connect(self) -> None:
        """Opens the channel; each service's stub is made on that service's first call."""
        self._channel = self._open_channel(*self._tls)
        self._stubs: dict[object, Any] = {}

    def _stub(self, stub_class: Callable[[grpc.Channel], _S]) -> _S:
        stub: _S | None = self._stubs.get(stub_class)
        if stub is None:
            stub = self._stubs[stub_class] = stub_class(self._channel)
        return stub

    @property
    def _config(self) -> config_pb2_grpc.ConfigServiceStub:
        return self._stub(config_pb2_grpc.ConfigServiceStub)

    @property
    def _data(self) -> data_pb2_grpc.DataServiceStub:
        return self._stub(data_pb2_grpc.DataServiceStub)

    @property
    def _gpus(self) -> gpu_pb2_grpc.GpuServiceStub:
        return self._stub(gpu_pb2_grpc.GpuServiceStub)

    @property
    def _jobs(self) -> job_pb2_grpc.JobServiceStub:
        return self._stub(job_pb2_grpc.JobServiceStub)

    @property
    def _dashboard(self) -> dashboard_pb2_grpc.DashboardServiceStub:
        return self._stub(dashboard_pb2_grpc.DashboardServiceStub)

    def _open_channel(
        self, tls_ca: str | Path | None, tls_cert: str | Path | None, tls_key: str | Path | None
    ) -> grpc.Channel:
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 8 * 1024 * 1024),
        ]
        if self.address.startswith("unix:"):
            return grpc.insecure_channel(self.address, options=options)
        if tls_ca is not None or tls_cert is not None or not _is_loopback(_host_of(self.address)):
            try:
                root = Path(tls_ca).read_bytes() if tls_ca is not None else None
                key = Path(tls_key).read_bytes() if tls_key is not None else None
                chain = Path(tls_cert).read_bytes() if tls_cert is not None else None
            except OSError as error:
                raise InvalidArgument(f"cannot read TLS file {error.filename}: {error.strerror}") from None
            credentials = grpc.ssl_channel_credentials(root, key, chain)
            return grpc.secure_channel(self.address, credentials, options=options)
        return grpc.insecure_channel(self.address, options=options)

    def close(self) -> None:
        """Closes the connection."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self._token}")] if self._token else []

    def _call(self, method: Callable[..., _T], request: Any, timeout: float | None = None) -> _T:
        try:
            return method(request, timeout=timeout or self._timeout, metadata=self._metadata())
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.address) from None

    def _stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from method(request, metadata=self._metadata())
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.address) from None

    def ping(self, timeout: float = 2.0) -> str:
        """Asks the daemon's standard health service; returns its status name (e.g. "SERVING").

        When no daemon answers, the connection is reopened before DaemonUnavailable is raised:
        gRPC would otherwise fail the next calls at once for up to its reconnect backoff (a
        second and more), so a daemon that has just started (by another CLI waiting on the
        same auto-start lock, or after a restart) would be reported missing.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except DaemonUnavailable:
            self._channel.close()
            self._connect()
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- config -------------------------------------------------------------------------------

    def config_template(self) -> str:
        """The commented YAML config template with every key at its default."""
        return self._call(self._config.GetTemplate, config_pb2.GetTemplateRequest()).yaml

    def config_schema(self) -> dict[str, Any]:
        """The config's JSON schema."""
        import json

        text = self._call(self._config.GetJsonSchema, config_pb2.GetJsonSchemaRequest()).json
        value = json.loads(text)
        return value if isinstance(value, dict) else {}

    def validate_config(self, path_or_text: str | Path) -> t.ValidationResult:
        """Validates a config file (a path) or YAML text.

        A ``Path`` is always a file. A ``str`` is a file when it names an existing file, or has
        no newline and no ``:``, or has no newline and ends in ``.yaml``/``.yml``; any other
        ``str`` is YAML text. So ``"/tmp/x/a:b.yaml"`` is read as a file (and a missing one is
        an ``InvalidArgument`` "no such config file", never validated as text), while
        ``"lora: {rank: 8}"`` is YAML; end one-line YAML text with a newline to be explicit.

        Raises:
            InvalidArgument: the file does not exist, cannot be read or is not UTF-8.
        """
        text, name = _read_config(path_or_text)
        response = self._call(
            self._config.ValidateConfig, config_pb2.ValidateConfigRequest(text=text, source_name=name)
        )
        return t.ValidationResult(
            valid=response.valid,
            errors=[_convert.config_issue(i) for i in response.errors],
            warnings=[_convert.config_issue(i) for i in response.warnings],
        )

    # -- GPUs ---------------------------------------------------------------------------------

    def list_gpus(self) -> t.GpuList:
        """The daemon machine's GPUs and a recommendation for the default model."""
        return _convert.gpu_list(self._call(self._gpus.ListGpus, gpu_pb2.ListGpusRequest()))

    # -- data ---------------------------------------------------------------------------------

    def upload(self, path: str | Path, progress: ProgressCallback | None = None) -> str:
        """Uploads a file to the daemon's content-addressed store; returns its sha256 digest.

        A file the daemon already holds is not sent again.
        """
        path = Path(path)
        if not path.is_file():
            raise InvalidArgument(f"{path}: no such file")
        digest, size = _sha256_of(path)
        stat = self._call(self._data.StatBlob, data_pb2.StatBlobRequest(digest=digest))
        if stat.exists:
            if progress:
                progress(size, size)
            return digest

        def chunks() -> Iterator[data_pb2.UploadChunk]:
            yield data_pb2.UploadChunk(
                header=data_pb2.UploadHeader(display_name=path.name, size=size, sha256=digest)
            )
            sent = 0
            with path.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                    sent += len(chunk)
                    yield data_pb2.UploadChunk(data=chunk)
                    if progress:
                        progress(sent, size)

        response = self._call(self._data.Upload, chunks())
        return response.digest

    def inspect_data(
        self,
        path: str | Path,
        sample: int = 0,
        *,
        format: str | None = None,
        max_seq_length: int = 0,
        model: str = "",
    ) -> t.DataInspection:
        """Uploads (if needed) and inspects a training data file.

        Args:
            path: JSON array or JSONL file (native, alpaca, sharegpt or OpenAI messages records).
            sample: how many records to return with their exact training text.
            format: "json" or "jsonl" to force the file format; None auto-detects.
            max_seq_length: token limit to check against (0: the default, 2048).
            model: model whose tokenizer to use (default: Qwen3's).
        """
        if sample < 0:
            raise InvalidArgument("sample must be >= 0")
        digest = self.upload(path)
        request = data_pb2.InspectDataRequest(
            digest=digest,
            display_name=Path(path).name,
            format=format or "",
            sample=sample,
            max_seq_length=max_seq_length,
            model=model,
        )
        return _convert.inspection(self._call(self._data.InspectData, request))

    # -- jobs ---------------------------------------------------------------------------------

    def submit(
        self,
        data: str | Path,
        config: str | Path,
        *,
        output_dir: str | Path | None = None,
        pipeline_id: str | None = None,
        resume: str | None = None,
        dry_run: bool = False,
        request_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> t.Job:
        """Uploads the data and submits a training job.

        Args:
            data: training data file.
            config: config file path or YAML text, told apart as in :meth:`validate_config`.
            output_dir: where the daemon writes the adapter and report (resolved on this machine);
                without it, the config's ``system.output_dir`` (relative to this process's working
                directory, which is sent along), else ``./training_output``.
            pipeline_id: a unique name for the job (``[A-Za-z0-9._-]{1,64}``).
            resume: ``PIPELINE_ID`` or ``PIPELINE_ID@STEP`` to continue.
            dry_run: plan only (init, data_prep, config_gen); train nothing.
            request_id: idempotency key; a retried submit with the same key returns the same job.
            progress: upload progress callback ``(sent_bytes, total_bytes)``.
        """
        import uuid

        text, config_name = _read_config(config)
        digest = self.upload(data, progress)
        request = job_pb2.SubmitJobRequest(
            request_id=request_id or uuid.uuid4().hex,
            data_digest=digest,
            data_name=Path(data).name,
            config_yaml=text,
            config_name=config_name,
            output_dir=str(expand_home(output_dir).resolve()) if output_dir is not None else "",
            client_cwd=os.getcwd(),
            pipeline_id=pipeline_id or "",
            resume=resume or "",
            dry_run=dry_run,
        )
        return _convert.job(self._call(self._jobs.SubmitJob, request).job)

    def get_job(self, job: str) -> t.Job:
        """A job by job id or pipeline id."""
        return _convert.job(self._call(self._jobs.GetJob, job_pb2.GetJobRequest(job=job)))

    def list_jobs(self, limit: int = 50) -> list[t.Job]:
        """Recent jobs, newest first."""
        response = self._call(self._jobs.ListJobs, job_pb2.ListJobsRequest(limit=limit))
        return [_convert.job(j) for j in response.jobs]

    def cancel(self, job: str) -> t.Job:
        """Cancels a queued or running job (its whole process tree)."""
        return _convert.job(self._call(self._jobs.CancelJob, job_pb2.CancelJobRequest(job=job)))

    def watch(self, job: str, after_seq: int = 0) -> Iterator[t.JobEvent]:
        """Events of a job after ``after_seq``: stored ones first, then live until it ends."""
        request = job_pb2.WatchJobRequest(job=job, after_seq=after_seq)
        for message in self._stream(self._jobs.WatchJob, request):
            yield _convert.event(message)

    def follow(
        self,
        job: str,
        after_seq: int = 0,
        *,
        reconnect_for: float = 120.0,
        on_disconnect: Callable[[DaemonUnavailable], None] | None = None,
    ) -> Iterator[t.JobEvent]:
        """Like :meth:`watch`, but rides out daemon restarts.

        When the stream breaks because the daemon went away (a crash, ``systemctl restart``), it
        watches again from the last event received, so every event arrives exactly once. Jobs keep
        running while the daemon is down; a restarted daemon reattaches to them or resumes them.

        Args:
            job: job id or pipeline id.
            after_seq: start after this event (0: from the first).
            reconnect_for: how long to keep trying, in seconds, each time the daemon is gone.
            on_disconnect: called once per outage with the error, e.g. to tell the user.

        Raises:
            DaemonUnavailable: the daemon stayed away longer than ``reconnect_for``.
        """
        seq = after_seq

        def events() -> Iterator[t.JobEvent]:
            nonlocal seq
            for event in self.watch(job, after_seq=seq):
                seq = event.seq
                yield event

        yield from self._resuming(
            job, events, lambda: f"cryptotune watch {job} --since {seq}", reconnect_for, on_disconnect
        )

    def follow_logs(
        self,
        job: str,
        *,
        reconnect_for: float = 120.0,
        on_disconnect: Callable[[DaemonUnavailable], None] | None = None,
    ) -> Iterator[str]:
        """Like ``logs(job, follow=True)``, but rides out daemon restarts without repeating a line.

        Raises:
            DaemonUnavailable: the daemon stayed away longer than ``reconnect_for`` seconds.
        """
        received = 0

        def lines() -> Iterator[str]:
            nonlocal received
            for line in self.logs(job, follow=True, skip_lines=received):
                received += 1
                yield line

        again = f"cryptotune logs {job} -f"
        yield from self._resuming(job, lines, lambda: again, reconnect_for, on_disconnect)

    def _resuming(
        self,
        job: str,
        stream: Callable[[], Iterator[_T]],
        again: Callable[[], str],
        reconnect_for: float,
        on_disconnect: Callable[[DaemonUnavailable], None] | None,
    ) -> Iterator[_T]:
        """Runs ``stream`` (which resumes where the previous one stopped) until the job is terminal,
        waiting for the daemon whenever it goes away."""
        while True:
            try:
                yield from stream()
                # The daemon ends these streams once the job is terminal; a stream cut short
                # without an error (a connection torn down in an odd way) is simply opened again.
                if self.get_job(job).terminal:
                    return
                time.sleep(0.5)
            except DaemonUnavailable as error:
                if on_disconnect is not None:
                    on_disconnect(error)
                self._wait_for_daemon(error, reconnect_for, again())

    def _wait_for_daemon(self, error: DaemonUnavailable, patience: float, again: str) -> None:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                if self.ping(timeout=2.0) == "SERVING":
                    return
            except DaemonUnavailable:
                continue
        raise DaemonUnavailable(
            f"{error.message}. Gave up after waiting {patience:.0f} s for the daemon to come back; "
            f"the job keeps its state. Follow it again with: {again}",
            error.code,
        )

    def dashboard_url(self, job: str = "") -> str:
        """A one-time, short-lived URL that signs a browser into the daemon's web dashboard (on the
        job's page when ``job`` is given). Raises FailedPrecondition when the daemon was started
        without ``--http-listen``."""
        request = dashboard_pb2.CreateDashboardLoginRequest(job=job)
        return self._call(self._dashboard.CreateDashboardLogin, request).url

    def logs(self, job: str, follow: bool = False, skip_lines: int = 0) -> Iterator[str]:
        """The job's log lines after the first ``skip_lines``; with ``follow`` keeps streaming until
        the job ends (see :meth:`follow_logs` to ride out daemon restarts)."""
        request = job_pb2.StreamLogsRequest(job=job, follow=follow, skip_lines=skip_lines)
        for message in self._stream(self._jobs.StreamLogs, request):
            yield message.line

    def export(
        self,
        job: str,
        destination: str | Path,
        *,
        merged: bool = False,
        on_progress: Callable[[t.ExportProgress], None] | None = None,
        on_serving_check: Callable[[t.ServingCheck], None] | None = None,
    ) -> list[Path]:
        """Copies the job's export to ``destination`` on this machine; returns the files written.

        Args:
            job: job id or pipeline id of a succeeded job.
            destination: a directory that does not exist yet or is empty.
            merged: the base model with the adapter merged in (safetensors shards, tokenizer, the
                official chat template, generation_config.json, a model card) instead of the adapter
                and report.
            on_progress: called as the daemon merges and as files arrive.
            on_serving_check: called (adapter exports) with whether vLLM would load the adapter.

        Raises:
            InvalidArgument: ``destination`` exists and is not an empty directory.
        """
        root = expand_home(destination).resolve()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            what = "is not a directory" if not root.is_dir() else "exists and is not empty"
            raise InvalidArgument(f"export directory {root} {what}: give a new or empty directory")
        written: list[Path] = []
        handle = None
        received = 0
        request = job_pb2.ExportJobRequest(job=job, merged=merged)
        try:
            for chunk in self._stream(self._jobs.ExportJob, request):
                if chunk.HasField("serving"):
                    if on_serving_check is not None:
                        on_serving_check(_convert.serving_check(chunk.serving))
                    continue
                if chunk.HasField("progress"):
                    if on_progress is not None:
                        progress = chunk.progress
                        on_progress(t.ExportProgress(progress.phase, progress.done, progress.total))
                    continue
                if handle is None:
                    target = (root / chunk.path).resolve()
                    if root not in target.parents:
                        raise CryptotuneError(f"refusing to write outside {root}: {chunk.path}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    handle = target.open("wb")
                    written.append(target)
                handle.write(chunk.data)
                received += len(chunk.data)
                if on_progress is not None and chunk.data:
                    on_progress(t.ExportProgress(f"receiving {chunk.path}", received, 0))
                if chunk.last:
                    handle.close()
                    handle = None
        finally:
            if handle is not None:
                handle.close()
        return written

    def generate(
        self,
        job: str,
        messages: str | list[dict[str, str]],
        *,
        max_new_tokens: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        compare: bool = False,
    ) -> Iterator[t.ChatEvent]:
        """Chats with a succeeded job's model: status events, decoded pieces as they are generated, then
        one :class:`~cryptotune.types.ChatDone` per model.

        The prompt is rendered with the official Qwen3-Thinking-2507 chat template; earlier assistant
        turns carry only their answer (the template drops their reasoning). Closing the iterator
        (or Ctrl-C) cancels the generation and frees the model's device.

        Args:
            job: job id or pipeline id.
            messages: one user prompt, or the conversation as ``{"role", "content"}`` dicts ending
                with a user turn.
            max_new_tokens: cap on generated tokens per answer (0: the daemon's default, 1024).
            temperature: sampling temperature (None: the model card's 0.6; 0: greedy decoding).
            top_p: nucleus sampling mass (None: 0.95).
            top_k: top-k sampling (None: 20).
            seed: makes sampling reproducible.
            compare: also answer with the base model (the adapter disabled), after the tuned one.
        """
        conversation = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
        try:
            chat = [job_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in conversation]
        except (KeyError, TypeError):
            raise InvalidArgument("each message needs a 'role' and a 'content'") from None
        request = job_pb2.GenerateRequest(
            job=job, messages=chat, max_new_tokens=max_new_tokens, compare=compare
        )
        if temperature is not None:
            request.temperature = temperature
        if top_p is not None:
            request.top_p = top_p
        if top_k is not None:
            request.top_k = top_k
        if seed is not None:
            request.seed = seed
        call = self._jobs.Generate(request, metadata=tuple(self._metadata()))
        try:
            for chunk in call:
                event = _convert.chat_event(chunk)
                if event is not None:
                    yield event
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.address) from None
        finally:
            call.cancel()  # a no-op after the end; stops the generation when the caller leaves early


_CONFIG_SUFFIXES = (".yaml", ".yml")


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except (OSError, ValueError):  # a name too long or with a NUL byte is no file
        return False


def _names_config_file(text: str) -> bool:
    """Whether a ``str`` given as a config is a file path (else it is YAML text).

    Multi-line text is YAML. One line is a path when it has no ``:`` (it cannot be a YAML
    mapping), ends in ``.yaml``/``.yml`` (a missing file is then reported, not validated as
    text) or names an existing file (``/tmp/x/a:b.yaml``, ``/runs/12:00/lora``).
    """
    if "\n" in text:
        return False
    return ":" not in text or text.lower().endswith(_CONFIG_SUFFIXES) or _is_file(text)


def _read_config(path_or_text: str | Path) -> tuple[str, str]:
    """(YAML text, source name) of a config given as a path or as YAML text."""
    if isinstance(path_or_text, str) and not _names_config_file(path_or_text):
        return path_or_text, "<text>"
    path = Path(path_or_text)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        hint = ""
        if isinstance(path_or_text, str) and ":" in path_or_text:
            hint = " (it was read as a path because it ends in .yaml/.yml; end YAML text with a newline)"
        raise InvalidArgument(f"{path}: no such config file{hint}") from None
    except OSError as error:
        raise InvalidArgument(f"{path}: cannot read ({error.strerror})") from None
    try:
        return data.decode("utf-8-sig"), path.name
    except UnicodeDecodeError as error:
        raise InvalidArgument(f"{path}: not UTF-8 (byte {error.start}); save the config as UTF-8") from None
