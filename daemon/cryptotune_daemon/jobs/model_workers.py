"""Worker processes that serve a finished job's model: one inference worker per chatted-with job
(loaded on demand, kept while in use, freed when idle or when its chat is cancelled) and one export
worker per merged export. The daemon process itself never loads a model."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptotune_daemon.config import load_config
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.gpus import GpuInventory
from cryptotune_daemon.jobs.chat_policy import CHAT_OWNER_PREFIX, Placement, adapter_of, choose_placement
from cryptotune_daemon.jobs.model import Job
from cryptotune_daemon.layout import REPORT_JSON
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.training.model_request import GenerateParams, ModelRequest, decode_line, encode_line
from cryptotune_daemon.worker.spec import JobSpec

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
LINE_LIMIT = 64 * 1024 * 1024  # a `done` line carries the whole answer
INFERENCE_MODULE = "cryptotune_daemon.worker.inference"
EXPORT_MODULE = "cryptotune_daemon.worker.export"
_WAIT_POLL_S = 1.0


@dataclass(frozen=True)
class ChatStatus:
    """Where a chat stands before its first piece: ``queued``, ``loading`` or ``ready``."""

    state: str
    message: str
    device: str = ""


@dataclass(frozen=True)
class ChatPiece:
    """A decoded piece of an answer (``model``: tuned or base; ``channel``: reasoning or answer)."""

    model: str
    channel: str
    text: str


@dataclass(frozen=True)
class ChatDone:
    """One model's whole answer."""

    model: str
    reasoning: str
    answer: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str


ChatEvent = ChatStatus | ChatPiece | ChatDone


@dataclass(frozen=True)
class ExportStep:
    """Progress of a merged export."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class ExportFile:
    """A file of an export: its path inside the export and where it lies now."""

    relative: str
    path: Path


def _read_report(job: Job) -> dict[str, Any]:
    try:
        value = json.loads((Path(job.output_dir) / REPORT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def model_request(
    job: Job, settings: DaemonSettings, *, device: str, output_dir: Path | None = None
) -> ModelRequest:
    """What a worker loads for ``job``: its base model (from the job's config) and its adapter."""
    adapter = adapter_of(job, "export" if output_dir is not None else "chat with")
    spec = JobSpec.from_json(job.spec)
    config = load_config(spec.config_yaml, spec.config_name)
    report = _read_report(job)
    card: dict[str, Any] = {}
    if output_dir is not None:
        card = {
            "base_model": config.model.model_name,
            "pipeline_id": job.pipeline_id,
            "data_name": spec.data_name,
            "data_digest": spec.data_digest,
            "lora_rank": config.lora.rank,
            "lora_alpha": config.lora.alpha,
            "lora_targets": list(config.lora.target_modules),
            "report": {k: v for k, v in report.items() if k != "generation_samples"},
        }
    return ModelRequest(
        job_id=job.job_id,
        model_name=config.model.model_name,
        revision=config.model.model_revision,
        trust_remote_code=config.model.trust_remote_code and settings.allow_remote_code,
        adapter_dir=adapter,
        cache_dir=settings.cache_dir,
        precision=str(report.get("precision") or config.precision),
        device=device,
        output_dir=output_dir,
        model_card=card,
    )


async def _spawn(
    module: str, request_path: Path, log_path: Path, gpu_uuid: str
) -> asyncio.subprocess.Process:
    """Starts a model worker in a session of its own, so that freeing it reaches its whole tree."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu_uuid}
    log_file: IO[bytes] = log_path.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "--request",
            str(request_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            env=env,
            limit=LINE_LIMIT,
        )
    finally:
        log_file.close()


async def _end(process: asyncio.subprocess.Process) -> None:
    """Ends a model worker: closes its stdin, then SIGTERM, then SIGKILL to its process group."""
    if process.stdin is not None:
        with contextlib.suppress(Exception):
            process.stdin.close()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)


def _error(message: dict[str, Any], fallback: str) -> CryptotuneError:
    try:
        code = ErrorCode(str(message.get("code")))
    except ValueError:
        code = ErrorCode.INTERNAL
    return CryptotuneError(code, str(message.get("message") or fallback))


class InferenceWorker:
    """One inference worker process with one job's model loaded; answers one turn at a time."""

    def __init__(
        self, job_id: str, placement: Placement, process: asyncio.subprocess.Process, log_path: Path
    ):
        self.job_id = job_id
        self.placement = placement
        self.process = process
        self.log_path = log_path
        self.turn_lock = asyncio.Lock()
        self.users = 0
        self.last_used = time.monotonic()
        self.device = "cpu"
        self._queues: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._freed_because = ""

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and (self._reader is None or not self._reader.done())

    async def wait_ready(self) -> None:
        """Waits for the model to load.

        Raises:
            CryptotuneError: the worker's own error (e.g. MODEL_UNAVAILABLE), or INTERNAL when it died.
        """
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise CryptotuneError(
                ErrorCode.INTERNAL, f"the inference worker ended while loading the model; see {self.log_path}"
            )
        message = decode_line(line)
        if message["type"] != "ready":
            raise _error(message, "loading the model failed")
        self.device = str(message.get("device") or "cpu")
        self._reader = asyncio.create_task(self._read_forever(), name=f"inference-{self.job_id}")

    async def _read_forever(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = decode_line(line)
            queue = self._queues.get(int(message.get("id") or 0))
            if queue is not None:
                queue.put_nowait(message)
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        """Ends every turn still waiting for this worker, saying why it is gone."""
        if self._freed_because:
            lost = {
                "type": "error",
                "code": ErrorCode.DAEMON_SHUTTING_DOWN.value,
                "message": self._freed_because,
            }
        else:
            lost = {
                "type": "error",
                "code": ErrorCode.INTERNAL.value,
                "message": f"the inference worker ended unexpectedly; see {self.log_path}",
            }
        for queue in self._queues.values():
            queue.put_nowait(lost)

    def _send(self, command: dict[str, Any]) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.write(encode_line(command))

    async def generate(self, params: GenerateParams) -> AsyncIterator[dict[str, Any]]:
        """The worker's ``piece`` and ``done`` messages for one request; a request left early is cancelled."""
        request_id = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues[request_id] = queue
        finished = False
        try:
            if not self.alive:
                raise CryptotuneError(
                    ErrorCode.INTERNAL, f"the inference worker is gone; see {self.log_path}"
                )
            self._send({"op": "generate", "id": request_id, "params": params.to_json()})
            while True:
                message = await queue.get()
                if message["type"] == "finished":
                    finished = True
                    return
                if message["type"] == "error":
                    finished = True
                    raise _error(message, "generation failed")
                yield message
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                with contextlib.suppress(Exception):
                    self._send({"op": "cancel", "id": request_id})

    async def stop(self, because: str = "") -> None:
        """Frees the worker (and its device); a turn still waiting is told ``because`` (the daemon stops)."""
        self._freed_because = because
        await _end(self.process)
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._fail_waiting()


def _chat_event(message: dict[str, Any]) -> ChatEvent:
    if message["type"] == "piece":
        return ChatPiece(str(message["model"]), str(message["channel"]), str(message["text"]))
    return ChatDone(
        model=str(message["model"]),
        reasoning=str(message.get("reasoning") or ""),
        answer=str(message.get("answer") or ""),
        prompt_tokens=int(message.get("prompt_tokens") or 0),
        generated_tokens=int(message.get("generated_tokens") or 0),
        finish_reason=str(message.get("finish_reason") or ""),
    )


class InferencePool:
    """The daemon's inference workers: at most ``max_chats`` chats at once, models freed when idle.

    A worker takes a free GPU (recorded in the engine's GPU owner map, so training waits for it) or,
    on a machine without GPUs, the CPU; when training holds every GPU, a chat waits and says so.
    """

    def __init__(
        self,
        settings: DaemonSettings,
        inventory: GpuInventory,
        owners: dict[str, str],
        wake_scheduler: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._inventory = inventory
        self._owners = owners
        self._wake_scheduler = wake_scheduler
        self._workers: dict[str, InferenceWorker] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._active = 0
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts freeing idle workers."""
        self._reaper = asyncio.create_task(self._reap_forever(), name="inference-reaper")

    async def stop(self) -> None:
        """Frees every worker."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for job_id in list(self._workers):
            await self._free(job_id, "the daemon is shutting down; chat again once it is back")

    def loaded(self) -> dict[str, int]:
        """Job id → the pid of its inference worker, for every loaded model."""
        return {job_id: worker.process.pid for job_id, worker in self._workers.items()}

    async def chat(self, job: Job, params: GenerateParams) -> AsyncIterator[ChatEvent]:
        """Answers ``params`` with ``job``'s model (and its base model with ``compare``).

        Raises:
            CryptotuneError: JOB_STATE_CONFLICT (no adapter), RESOURCE_EXHAUSTED (too many chats),
                REQUEST_INVALID (e.g. a prompt longer than the context), MODEL_UNAVAILABLE.
        """
        adapter_of(job, "chat with")
        if self._active >= self._settings.max_chats:
            raise CryptotuneError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{self._active} chats are already being answered (the daemon's --max-chats); "
                "try again when one ends",
            )
        self._active += 1
        worker: InferenceWorker | None = None
        try:
            async for status in self._load(job):
                yield status
            worker = self._workers[job.job_id]
            worker.users += 1
            try:
                if worker.turn_lock.locked():
                    yield ChatStatus("queued", "another chat with this model is answering; this one is next")
                async with worker.turn_lock:
                    yield ChatStatus("ready", f"generating on {worker.device}", worker.device)
                    async for message in worker.generate(params):
                        yield _chat_event(message)
            finally:
                worker.users -= 1
                worker.last_used = time.monotonic()
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (Ctrl-C): stop generating and free the device unless another chat uses it.
            if worker is not None and worker.users == 0:
                await self._free(job.job_id)
            raise
        finally:
            self._active -= 1

    async def _load(self, job: Job) -> AsyncIterator[ChatStatus]:
        """Makes sure ``job``'s model is loaded, saying when the chat waits or loads."""
        lock = self._loading.setdefault(job.job_id, asyncio.Lock())
        async with lock:
            current = self._workers.get(job.job_id)
            if current is not None and current.alive:
                return
            if current is not None:
                await self._free(job.job_id)
            placement = self._placement()
            if placement.kind == "wait":
                yield ChatStatus(
                    "queued", "training holds every GPU: the chat waits for one to be free (Ctrl-C gives up)"
                )
                while placement.kind == "wait":
                    await asyncio.sleep(_WAIT_POLL_S)
                    placement = self._placement()
            await self._make_room()
            request = model_request(job, self._settings, device="cuda" if placement.kind == "gpu" else "cpu")
            device = placement.gpu_uuid or "cpu"
            yield ChatStatus(
                "loading",
                f"loading {request.model_name} with the adapter of {job.pipeline_id} on {device}",
                device,
            )
            if placement.kind == "gpu":
                self._owners[placement.gpu_uuid] = CHAT_OWNER_PREFIX + job.job_id
            try:
                worker = await self._start_worker(job, request, placement)
            except BaseException:
                self._release(placement)
                raise
            self._workers[job.job_id] = worker

    def _placement(self) -> Placement:
        return choose_placement([g.uuid for g in self._inventory.list_gpus()], self._owners)

    async def _make_room(self) -> None:
        """Frees idle workers (least recently used first) until one more fits under ``max_chats``."""
        idle = sorted((w for w in self._workers.values() if w.users == 0), key=lambda w: w.last_used)
        while len(self._workers) >= self._settings.max_chats and idle:
            await self._free(idle.pop(0).job_id)
        if len(self._workers) >= self._settings.max_chats:
            raise CryptotuneError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{len(self._workers)} models are loaded and in use (the daemon's --max-chats); "
                "try again later",
            )

    async def _start_worker(self, job: Job, request: ModelRequest, placement: Placement) -> InferenceWorker:
        directory = self._settings.models_dir / f"chat-{job.job_id}"
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / "worker.log"
        process = await _spawn(
            INFERENCE_MODULE, request.write(directory / "request.json"), log_path, placement.gpu_uuid
        )
        worker = InferenceWorker(job.job_id, placement, process, log_path)
        try:
            await worker.wait_ready()
        except BaseException:
            await worker.stop()
            raise
        log.info("inference worker %d serves job %s on %s", process.pid, job.job_id, worker.device)
        return worker

    def _release(self, placement: Placement) -> None:
        if placement.kind == "gpu" and self._owners.get(placement.gpu_uuid, "").startswith(CHAT_OWNER_PREFIX):
            del self._owners[placement.gpu_uuid]
            self._wake_scheduler()

    async def _free(self, job_id: str, because: str = "") -> None:
        worker = self._workers.pop(job_id, None)
        if worker is None:
            return
        await worker.stop(because)
        self._release(worker.placement)
        log.info("inference worker of job %s freed", job_id)

    async def _reap_forever(self) -> None:
        timeout = self._settings.chat_idle_timeout_s
        while True:
            await asyncio.sleep(min(max(timeout / 4, 0.25), 5.0))
            now = time.monotonic()
            for job_id, worker in list(self._workers.items()):
                if worker.users == 0 and (not worker.alive or now - worker.last_used >= timeout):
                    with contextlib.suppress(Exception):
                        await self._free(job_id)


async def merged_export(job: Job, settings: DaemonSettings) -> AsyncIterator[ExportStep | ExportFile]:
    """Merges ``job``'s adapter into its base model in an export worker; yields progress, then the files.

    The files live in a scratch directory under the state dir until the caller stops iterating.

    Raises:
        CryptotuneError: JOB_STATE_CONFLICT (no adapter), MODEL_UNAVAILABLE, or INTERNAL when the worker died.
    """
    scratch = settings.models_dir / f"export-{job.job_id}-{uuid.uuid4().hex[:8]}"
    target = scratch / "model"
    request = model_request(job, settings, device="cpu", output_dir=target)
    scratch.mkdir(parents=True, exist_ok=True)
    log_path = scratch / "worker.log"
    process = await _spawn(EXPORT_MODULE, request.write(scratch / "request.json"), log_path, "")
    try:
        assert process.stdout is not None
        finished = False
        while line := await process.stdout.readline():
            message = decode_line(line)
            if message["type"] == "progress":
                yield ExportStep(str(message["phase"]), int(message["done"]), int(message["total"]))
            elif message["type"] == "error":
                log.warning(
                    "merged export of %s failed; worker log: %s",
                    job.job_id,
                    log_path.read_text(errors="replace")[-4000:],
                )
                raise _error(message, "the merged export failed")
            elif message["type"] == "finished":
                finished = True
        await process.wait()
        if not finished or process.returncode != 0:
            tail = log_path.read_text(errors="replace")[-4000:]
            log.error("export worker of %s exited with %s: %s", job.job_id, process.returncode, tail)
            raise CryptotuneError(
                ErrorCode.INTERNAL, "the export worker ended without finishing; see the daemon's log"
            )
        for path in sorted(p for p in target.rglob("*") if p.is_file()):
            yield ExportFile(str(path.relative_to(target)), path)
    finally:
        await _end(process)
        shutil.rmtree(scratch, ignore_errors=True)
