"""Runs jobs: queue, GPU allotment, worker supervision, event ingestion, watchers, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.gpus import GpuInventory
from cryptotune_daemon.jobs import worker_process as wp
from cryptotune_daemon.jobs.model import Job, JobEvent, JobState
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.submission import SubmitRequest, prepare
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore

log = logging.getLogger(__name__)

POLL_S = 0.25
RETRY_BUDGET = 3
EXPORTED_FILES = ("report.json", "report.md", "loss_curve.png", "resolved_config.yaml")
EXPORT_CHUNK = 1024 * 1024
LOG_CHUNK = 1024 * 1024


class JobManager:
    """The daemon's job engine. All public methods are called from the asyncio loop."""

    def __init__(
        self, settings: DaemonSettings, store: JobStore, blobs: BlobStore, inventory: GpuInventory
    ) -> None:
        self._settings = settings
        self._store = store
        self._blobs = blobs
        self._inventory = inventory
        self._changed: dict[str, asyncio.Event] = {}
        self._wakeup = asyncio.Event()
        self._allocated: dict[str, str] = {}  # GPU uuid → job id
        self._cpu_jobs: set[str] = set()
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._scheduler: asyncio.Task[None] | None = None
        self._accepting = True

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Reconciles jobs left by a previous daemon, then starts the scheduler."""
        self._settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        for job in self._store.list_nonterminal():
            await self._reconcile(job)
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="scheduler")
        self._wakeup.set()

    async def stop(self) -> None:
        """Stops scheduling and following workers; running workers keep training (see docs)."""
        self._accepting = False
        tasks = [t for t in (self._scheduler, *self._supervisors.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def owners(self) -> dict[str, str]:
        """Which job owns each allotted GPU (uuid → job id)."""
        return dict(self._allocated)

    # -- requests -------------------------------------------------------------------------------

    def submit(self, request: SubmitRequest) -> tuple[Job, bool]:
        """Validates and queues a job; a repeated request id returns the first job."""
        existing = self._store.find_by_request(request.request_id) if request.request_id else None
        if existing is not None:
            return existing, True
        if not self._accepting:
            raise CryptotuneError(
                ErrorCode.RESOURCE_EXHAUSTED, "the daemon is shutting down; submit again later"
            )
        prepared = prepare(
            request,
            settings=self._settings,
            store=self._store,
            blobs=self._blobs,
            gpu_count=len(self._inventory.list_gpus()),
        )
        job, existed = self._store.create_job(
            request_id=request.request_id,
            pipeline_id=prepared.pipeline_id,
            output_dir=str(prepared.output_dir),
            spec=prepared.spec,
            dry_run=request.dry_run,
            resumed_from=prepared.resumed_from,
        )
        self._wakeup.set()
        return job, existed

    def get(self, ref: str) -> Job:
        """A job by job id, pipeline id, or output directory."""
        try:
            return self._store.get(ref)
        except CryptotuneError as error:
            if error.code != ErrorCode.JOB_NOT_FOUND or not ref.startswith("/"):
                raise
        target = str(Path(ref).resolve())
        for job in self._store.list_jobs(limit=1000):
            if job.output_dir == target:
                return job
        raise CryptotuneError(ErrorCode.JOB_NOT_FOUND, f"no job writes to {target}")

    def list_jobs(self, limit: int) -> list[Job]:
        """Recent jobs, newest first."""
        return self._store.list_jobs(limit=max(1, min(limit or 50, 1000)))

    def cancel(self, ref: str) -> Job:
        """Cancels a job: queued ones at once, running ones by ending their whole process tree."""
        job = self.get(ref)
        if job.is_terminal:
            return job
        if job.state == JobState.QUEUED:
            done = self._store.transition(
                job.job_id,
                JobState.CANCELLED,
                expected={JobState.QUEUED},
                reason="cancelled before it started",
            )
            if done is not None:
                self._notify(job.job_id)
                return done
            job = self._store.get(job.job_id)
        if job.state in (JobState.RUNNING, JobState.RECOVERING):
            moved = self._store.transition(
                job.job_id,
                JobState.CANCELLING,
                expected={JobState.RUNNING, JobState.RECOVERING},
                reason="cancel requested",
            )
            if moved is not None:
                job = moved
                self._notify(job.job_id)
        if job.state == JobState.CANCELLING:
            if job.worker_pid:
                wp.signal_group(job.worker_pid, signal.SIGTERM)
                asyncio.get_running_loop().create_task(self._kill_after_grace(job.worker_pid))
            elif job.job_id not in self._supervisors:
                finished = self._store.transition(job.job_id, JobState.CANCELLED, reason="cancelled")
                self._notify(job.job_id)
                return finished or self._store.get(job.job_id)
        return self._store.get(job.job_id)

    async def _kill_after_grace(self, pgid: int) -> None:
        await asyncio.sleep(wp.TERM_GRACE_S)
        if wp.group_alive(pgid):
            log.warning("worker group %s ignored SIGTERM for %.0f s: sending SIGKILL", pgid, wp.TERM_GRACE_S)
            wp.signal_group(pgid, signal.SIGKILL)

    async def watch(self, ref: str, after_seq: int) -> AsyncIterator[JobEvent]:
        """Stored events after ``after_seq``, then live ones, until the job is terminal."""
        if after_seq < 0:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, "after_seq must be >= 0")
        job_id = self.get(ref).job_id
        seq = after_seq
        while True:
            events = self._store.events_after(job_id, seq, limit=500)
            for event in events:
                seq = event.seq
                yield event
            if events:
                continue
            if self._store.get(job_id).is_terminal:
                if not self._store.events_after(job_id, seq, limit=1):
                    return
                continue
            await self._wait_change(job_id, 1.0)

    async def logs(self, ref: str, follow: bool) -> AsyncIterator[str]:
        """The worker's log lines; with ``follow``, new ones until the job is terminal."""
        job = self.get(ref)
        path = self._settings.jobs_dir / job.job_id / "worker.log"
        offset = 0
        pending = b""
        while True:
            chunk = b""
            with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(LOG_CHUNK)
            offset += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace")
            if len(chunk) == LOG_CHUNK:
                continue  # more is already there: no need to wait
            if not follow or self._store.get(job.job_id).is_terminal:
                if pending:
                    yield pending.decode("utf-8", errors="replace")
                return
            await self._wait_change(job.job_id, 0.5)

    def export_files(self, ref: str) -> Iterator[tuple[str, Path]]:
        """The adapter and report files of a succeeded job, as (relative path, absolute path)."""
        job = self.get(ref)
        if job.state != JobState.SUCCEEDED or job.dry_run:
            what = "a dry run has no adapter" if job.dry_run else f"it is {job.state.value}"
            raise CryptotuneError(
                ErrorCode.JOB_STATE_CONFLICT, f"job {job.job_id} cannot be exported: {what}"
            )
        root = Path(job.output_dir)
        adapter = root / "adapter"
        if not adapter.is_dir():
            raise CryptotuneError(
                ErrorCode.JOB_STATE_CONFLICT, f"{adapter} is missing: was the output dir moved?"
            )
        for path in sorted(adapter.rglob("*")):
            if path.is_file():
                yield str(path.relative_to(root)), path
        for name in EXPORTED_FILES:
            if (root / name).is_file():
                yield name, root / name

    # -- scheduling -----------------------------------------------------------------------------

    async def _schedule_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=2.0)
            self._wakeup.clear()
            try:
                self._schedule_once()
            except Exception:  # the scheduler must survive a bad job; the job itself is failed
                log.exception("scheduler pass failed")

    def _schedule_once(self) -> None:
        queued = sorted(
            self._store.list_jobs(limit=1000, states={JobState.QUEUED}), key=lambda j: j.created_at
        )
        gpus = self._inventory.list_gpus()
        for job in queued:
            world = int(job.spec.get("world_size", 1))
            if gpus:
                free = [g.uuid for g in gpus if g.uuid not in self._allocated]
                if len(free) < world:
                    return  # strict FIFO: the head of the queue waits for its GPUs
                chosen = free[:world]
                device = "cuda"
            else:
                if len(self._cpu_jobs) >= self._settings.max_parallel_cpu_jobs:
                    return
                chosen = []
                device = "cpu"
            self._launch(job, chosen, device)

    def _launch(self, job: Job, gpu_uuids: list[str], device: str) -> None:
        running = self._store.transition(job.job_id, JobState.RUNNING, expected={JobState.QUEUED})
        if running is None:
            return  # cancelled meanwhile
        job_dir = self._settings.jobs_dir / job.job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            **job.spec,
            "job_id": job.job_id,
            "device": device,
            "events_path": str(job_dir / "events.jsonl"),
        }
        spec_path = job_dir / "spec.json"
        spec_path.write_text(json.dumps(spec, ensure_ascii=False, indent=2))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ",".join(gpu_uuids)}
        world = int(spec.get("world_size", 1))
        try:
            handle = wp.launch(spec_path, world, job_dir / "worker.log", env)
        except OSError as error:
            self._store.transition(job.job_id, JobState.FAILED, reason=f"could not start the worker: {error}")
            self._notify(job.job_id)
            return
        for uuid in gpu_uuids:
            self._allocated[uuid] = job.job_id
        if not gpu_uuids:
            self._cpu_jobs.add(job.job_id)
        self._store.set_worker(job.job_id, handle.pid, handle.started_at)
        self._store.set_gpus(job.job_id, gpu_uuids or [])
        self._notify(job.job_id)
        log.info("job %s started (pid %s, %s, world size %s)", job.job_id, handle.pid, device, world)
        self._follow(job.job_id, handle)

    def _follow(self, job_id: str, handle: wp.WorkerHandle) -> None:
        self._supervisors[job_id] = asyncio.get_running_loop().create_task(
            self._supervise(job_id, handle), name=f"supervise-{job_id}"
        )

    async def _supervise(self, job_id: str, handle: wp.WorkerHandle) -> None:
        try:
            while wp.is_alive(handle):
                self._ingest(job_id)
                await asyncio.sleep(POLL_S)
            # Stragglers (dataloader children, torchrun ranks) hold GPUs too: wait for the group.
            deadline = time.monotonic() + wp.TERM_GRACE_S
            while wp.group_alive(handle.pid):
                if time.monotonic() > deadline:
                    wp.signal_group(handle.pid, signal.SIGKILL)
                await asyncio.sleep(POLL_S)
            self._ingest(job_id)
            self._finish(job_id, wp.exit_code(handle.pid))
        finally:
            self._release(job_id)
            self._supervisors.pop(job_id, None)
            self._wakeup.set()

    def _release(self, job_id: str) -> None:
        for uuid in [u for u, owner in self._allocated.items() if owner == job_id]:
            del self._allocated[uuid]
        self._cpu_jobs.discard(job_id)

    def _ingest(self, job_id: str) -> None:
        job = self._store.get(job_id)
        path = self._settings.jobs_dir / job_id / "events.jsonl"
        events, offset = wp.read_new_events(path, job.events_offset)
        if events:
            self._store.ingest_worker_events(job_id, events, offset)
            self._notify(job_id)

    def _outcome(self, job_id: str) -> tuple[bool, str]:
        """(has a result event, failure reason from a failed event or "")."""
        seq, result, reason = 0, False, ""
        while batch := self._store.events_after(job_id, seq, limit=1000):
            for event in batch:
                seq = event.seq
                if event.type == "result":
                    result = True
                elif event.type == "failed":
                    reason = str(event.data.get("reason", "")) or reason
        return result, reason

    def _finish(self, job_id: str, code: int | None) -> None:
        job = self._store.get(job_id)
        if job.is_terminal:
            return
        has_result, reason = self._outcome(job_id)
        if job.state == JobState.CANCELLING:
            target, why = JobState.CANCELLED, "cancelled by user"
        elif (code == 0 or code is None) and (has_result or job.dry_run) and not reason:
            target, why = JobState.SUCCEEDED, ""
        else:
            target = JobState.FAILED
            why = reason or _describe_exit(code)
        self._store.set_worker(job_id, None, None)
        self._store.transition(job_id, target, reason=why)
        self._notify(job_id)
        log.info("job %s %s%s", job_id, target.value, f": {why}" if why else "")

    async def _reconcile(self, job: Job) -> None:
        """Picks up a job a previous daemon left unfinished."""
        if job.state == JobState.QUEUED:
            return
        handle = (
            wp.WorkerHandle(job.worker_pid, job.worker_started_at)
            if job.worker_pid and job.worker_started_at
            else None
        )
        if handle is not None and wp.is_alive(handle):
            log.info("reattaching to job %s (worker pid %s)", job.job_id, handle.pid)
            for uuid in job.gpu_uuids:
                self._allocated[uuid] = job.job_id
            if not job.gpu_uuids:
                self._cpu_jobs.add(job.job_id)
            self._follow(job.job_id, handle)
            return
        self._ingest(job.job_id)
        has_result, reason = self._outcome(job.job_id)
        if job.state == JobState.CANCELLING:
            self._store.transition(job.job_id, JobState.CANCELLED, reason="cancelled by user")
        elif has_result and not reason:
            self._store.transition(job.job_id, JobState.SUCCEEDED)
        elif reason:
            self._store.transition(job.job_id, JobState.FAILED, reason=reason)
        else:
            self._recover(job)

    def _recover(self, job: Job) -> None:
        """A worker vanished without a verdict: resume it from its newest checkpoint, within budget."""
        if job.state == JobState.RUNNING:
            moved = self._store.transition(job.job_id, JobState.RECOVERING, reason="worker lost")
            if moved is None:
                return
        retries = self._store.increment_retries(job.job_id)
        if retries > RETRY_BUDGET:
            self._store.transition(
                job.job_id,
                JobState.FAILED,
                reason=f"worker lost {retries} times; giving up (see 'cryptotune logs')",
            )
            return
        spec = {**job.spec, "resume": {"output_dir": job.output_dir, "step": None}}
        self._store.update_spec(job.job_id, spec)
        self._store.set_worker(job.job_id, None, None)
        self._store.transition(
            job.job_id, JobState.QUEUED, reason=f"resuming from the newest checkpoint (retry {retries})"
        )

    # -- notifications --------------------------------------------------------------------------

    def _notify(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def _wait_change(self, job_id: str, timeout: float) -> None:
        event = self._changed.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the worker exited without reporting a result; see 'cryptotune logs JOB'"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the worker was killed by {name}{hint}; see 'cryptotune logs JOB'"
    return f"the worker exited with code {code} without a reason; see 'cryptotune logs JOB'"


def chunks_of(path: Path) -> Iterator[bytes]:
    """A file in export-sized chunks (at least one, possibly empty)."""
    with path.open("rb") as handle:
        first = True
        while True:
            data = handle.read(EXPORT_CHUNK)
            if not data and not first:
                return
            first = False
            yield data
            if len(data) < EXPORT_CHUNK:
                return
