"""Runs jobs: queue, GPU allotment, worker supervision, event ingestion, watchers, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.gpus import GpuInventory
from cryptotune_daemon.jobs import worker_process as wp
from cryptotune_daemon.jobs.model import Job, JobEvent, JobState
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.submission import SubmitRequest, prepare
from cryptotune_daemon.layout import (
    ADAPTER_DIR,
    EVENTS_FILE,
    EXPORTED_FILES,
    SPEC_FILE,
    STOP_MARKER,
    WORKER_LOG,
)
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore
from cryptotune_daemon.training.oom_relaunch import OomRelaunchRequest, clear_request, read_request
from cryptotune_daemon.worker.spec import JobSpec, ResumeSpec

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a worker's liveness is checked
# How often a running worker's event file is checked for growth (one stat call): what a watcher
# waits at most for an event beyond the worker writing it. Polling rather than inotify: it is
# portable, survives the file being created late, and costs ~20 stat calls a second per job.
EVENT_POLL_S = 0.05
# Resumes after real worker deaths (killed, crashed) before a job fails; daemon restarts do not count.
RETRY_BUDGET = 3
TEST_RECONCILE_DELAY_ENV = "CRYPTOTUNE_TEST_RECONCILE_DELAY_S"
EXPORT_CHUNK = 1024 * 1024
LOG_CHUNK = 1024 * 1024


class JobManager:
    """The daemon's job engine. All public methods are called from the asyncio loop.

    Reliability rules (see docs/reliability.md):

    - A worker runs in its own session; every process of it holds the job lock
      (:mod:`~cryptotune_daemon.jobs.worker_process`), so a job never gets a second worker and its
      GPUs return to the pool only when none of its processes remains.
    - A daemon restart reattaches to live workers; a job whose worker is gone without a verdict
      goes RECOVERING and resumes from its newest verified checkpoint. Only a real worker death
      counts against ``RETRY_BUDGET``: a worker that was never started, or one ended by the
      daemon's own graceful stop (systemd's KillMode=mixed), is resumed without counting.
    """

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
        self._handles: dict[str, wp.WorkerHandle | None] = {}
        self._killers: dict[str, asyncio.Task[None]] = {}
        self._blocked: set[str] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconciled = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Reconciles jobs left by a previous daemon, then starts the scheduler."""
        self._settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        delay = float(os.environ.get(TEST_RECONCILE_DELAY_ENV, "0") or 0)
        if delay > 0:  # test hook: widens the window in which health must say NOT_SERVING
            await asyncio.sleep(delay)
        for job in self._store.list_nonterminal():
            try:
                self._reconcile(self._store.get(job.job_id))
            except Exception:  # one broken job must not keep the daemon from serving the others
                log.exception("could not reconcile job %s", job.job_id)
        self._reconciled = True
        self._loop = asyncio.get_running_loop()
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="scheduler")
        self._wakeup.set()

    async def stop(self) -> None:
        """Stops scheduling and following workers; running workers keep training (see docs).

        Every followed job's events are ingested first, so the store is current, and a marker
        records that this daemon, not a failure, stopped following the worker: under systemd
        (KillMode=mixed) the workers are ended right after, and the next daemon resumes those jobs
        without counting a retry.
        """
        self._accepting = False
        for changed in self._changed.values():
            changed.set()  # wakes watchers so that their streams end now
        self._changed.clear()
        if self._scheduler is not None:
            self._scheduler.cancel()
        for job_id, handle in list(self._handles.items()):
            with contextlib.suppress(Exception):
                self._ingest(job_id)
            if handle is not None:
                with contextlib.suppress(OSError):
                    self._stop_marker(job_id).write_text(
                        json.dumps({"pid": handle.pid, "started_at": handle.started_at, "at": time.time()})
                    )
        tasks = [t for t in (self._scheduler, *self._supervisors.values(), *self._killers.values()) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _wake_from_any_thread(self) -> None:
        # submit() runs in a worker thread (the servicer keeps YAML parsing off the event loop), and
        # asyncio.Event is not thread-safe: hand the wake-up to the loop.
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        else:
            loop.call_soon_threadsafe(self._wakeup.set)

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
            raise _shutting_down("submit again later")
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
            spec=prepared.spec.to_json(),
            dry_run=request.dry_run,
            resumed_from=prepared.resumed_from,
        )
        self._wake_from_any_thread()
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
            handle = self._handles.get(job.job_id) or _db_handle(job)
            if job.job_id in self._supervisors or wp.job_alive(self._job_dir(job.job_id), handle):
                self._terminate(job.job_id, handle)
                if self._reconciled and job.job_id not in self._supervisors:
                    # A stray process (before start-up, reconciliation attaches): follow it to its end.
                    self._attach(job.job_id, job.gpu_uuids, handle)
            else:  # nothing of it runs (e.g. between a lost worker and its resume)
                finished = self._store.transition(
                    job.job_id, JobState.CANCELLED, expected={JobState.CANCELLING}, reason="cancelled"
                )
                self._notify(job.job_id)
                return finished or self._store.get(job.job_id)
        return self._store.get(job.job_id)

    def _terminate(self, job_id: str, handle: wp.WorkerHandle | None) -> None:
        """SIGTERM to every process of the job now, SIGKILL to what is left after the grace period."""
        wp.signal_job(self._job_dir(job_id), handle, signal.SIGTERM)
        if job_id not in self._killers:
            self._killers[job_id] = asyncio.get_running_loop().create_task(
                self._kill_after_grace(job_id, handle), name=f"kill-{job_id}"
            )

    async def _kill_after_grace(self, job_id: str, handle: wp.WorkerHandle | None) -> None:
        try:
            await asyncio.sleep(wp.TERM_GRACE_S)
            job_dir = self._job_dir(job_id)
            if wp.job_alive(job_dir, handle):
                log.warning(
                    "job %s ignored SIGTERM for %.0f s: sending SIGKILL to all its processes",
                    job_id,
                    wp.TERM_GRACE_S,
                )
                wp.signal_job(job_dir, handle, signal.SIGKILL)
        finally:
            self._killers.pop(job_id, None)

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
            if not self._accepting:
                # End the stream now rather than hold the shutdown for the server's grace period.
                raise _shutting_down(f"watch again with after_seq={seq} once it is back")
            await self._wait_change(job_id, 1.0)

    async def logs(self, ref: str, follow: bool, skip_lines: int = 0) -> AsyncIterator[str]:
        """The worker's log lines after the first ``skip_lines``; with ``follow``, new ones until the
        job is terminal."""
        job = self.get(ref)
        path = self._settings.jobs_dir / job.job_id / WORKER_LOG
        offset = 0
        pending = b""
        skipped = 0
        ended = False  # the job was terminal before the last read: that read was the final one
        while True:
            chunk = b""
            with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(LOG_CHUNK)
            offset += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            if skipped < skip_lines:
                dropped = min(len(lines), skip_lines - skipped)
                skipped += dropped
                lines = lines[dropped:]
            for line in lines:
                yield line.decode("utf-8", errors="replace")
            if len(chunk) == LOG_CHUNK:
                continue  # more is already there: no need to wait
            if not follow or ended:
                if pending and skipped >= skip_lines:
                    yield pending.decode("utf-8", errors="replace")
                return
            if self._store.get(job.job_id).is_terminal:
                ended = True  # read once more: the worker may have written after our last read
                continue
            if not self._accepting:
                raise _shutting_down("follow the logs again once it is back")
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
        adapter = root / ADAPTER_DIR
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
            world = JobSpec.from_json(job.spec).world_size
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
            if wp.job_alive(self._job_dir(job.job_id), None):
                # A process of its previous worker lingers (and holds its resources): starting
                # another would give the job two workers. Strict FIFO: the queue waits with it.
                if job.job_id not in self._blocked:
                    self._blocked.add(job.job_id)
                    log.warning("job %s waits for a process of its previous worker to end", job.job_id)
                return
            self._blocked.discard(job.job_id)
            self._launch(job, chosen, device)

    def _job_dir(self, job_id: str) -> Path:
        return self._settings.jobs_dir / job_id

    def _stop_marker(self, job_id: str) -> Path:
        return self._job_dir(job_id) / STOP_MARKER

    def _launch(self, job: Job, gpu_uuids: list[str], device: str) -> None:
        job_dir = self._job_dir(job.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        events_path = job_dir / EVENTS_FILE
        # A resumed job appends to the same event file: take what the dead worker left, and drop
        # its half-written last line (no process of the job runs: the scheduler checked).
        self._ingest(job.job_id)
        wp.drop_partial_events(events_path, self._store.get(job.job_id).events_offset)
        wp.forget_processes(job_dir)  # so that a crash from here on never sees an earlier leader
        clear_request(job_dir)  # an earlier run's out-of-memory request was handled (or is stale)
        running = self._store.transition(job.job_id, JobState.RUNNING, expected={JobState.QUEUED})
        if running is None:
            return  # cancelled meanwhile
        with contextlib.suppress(FileNotFoundError):
            self._stop_marker(job.job_id).unlink()
        spec_path = job_dir / SPEC_FILE
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ",".join(gpu_uuids)}
        try:
            spec = dataclasses.replace(
                JobSpec.from_json(running.spec), job_id=job.job_id, device=device, events_path=events_path
            )
            world = spec.world_size
            spec_path.write_text(json.dumps(spec.to_json(), ensure_ascii=False, indent=2))
            handle = wp.launch(spec_path, world, job_dir / WORKER_LOG, env, job_dir)
        except wp.WorkerStillRunning as error:
            self._recover(job.job_id, str(error), count=False)
            return
        except (OSError, CryptotuneError) as error:
            self._store.transition(job.job_id, JobState.FAILED, reason=f"could not start the worker: {error}")
            self._notify(job.job_id)
            return
        # Follow it first: whatever happens to the bookkeeping below, the worker is supervised and
        # its resources stay taken. (A restarted daemon finds it through worker.pids anyway.)
        self._attach(job.job_id, gpu_uuids, handle)
        try:
            self._store.set_worker(job.job_id, handle.pid, handle.started_at)
            self._store.set_gpus(job.job_id, gpu_uuids)
        except CryptotuneError:
            log.exception("could not record the worker of job %s", job.job_id)
        log.info("job %s started (pid %s, %s, world size %s)", job.job_id, handle.pid, device, world)

    def _attach(self, job_id: str, gpu_uuids: Sequence[str], handle: wp.WorkerHandle | None) -> None:
        """Takes the job's resources and follows its worker until no process of it remains."""
        for uuid in gpu_uuids:
            self._allocated[uuid] = job_id
        if not gpu_uuids:
            self._cpu_jobs.add(job_id)
        self._handles[job_id] = handle
        self._notify(job_id)
        self._supervisors[job_id] = asyncio.get_running_loop().create_task(
            self._supervise(job_id, handle), name=f"supervise-{job_id}"
        )

    async def _supervise(self, job_id: str, handle: wp.WorkerHandle | None) -> None:
        job_dir = self._job_dir(job_id)
        try:
            # Without a known leader (the daemon died between launch and recording it) the job
            # lock, held by every process of the worker, says when it is over.
            events_size = -1
            while wp.is_alive(handle) if handle is not None else wp.lock_held(job_dir):
                for _ in range(round(POLL_S / EVENT_POLL_S)):
                    size = _file_size(job_dir / EVENTS_FILE)
                    if size != events_size:
                        if not self._ingest_safely(job_id):
                            await asyncio.sleep(POLL_S)  # e.g. a full disk: retry at a calmer pace
                            break
                        events_size = size
                    await asyncio.sleep(EVENT_POLL_S)
            # Stragglers (dataloader children, torchrun ranks in sessions of their own, ranks
            # orphaned by a killed torchrun) hold GPUs too: end them and wait until none remains.
            if wp.job_alive(job_dir, handle):
                wp.signal_job(job_dir, handle, signal.SIGTERM)
                deadline = time.monotonic() + wp.TERM_GRACE_S
                while wp.job_alive(job_dir, handle):
                    self._ingest_safely(job_id)
                    if time.monotonic() > deadline:
                        wp.signal_job(job_dir, handle, signal.SIGKILL)
                    await asyncio.sleep(POLL_S)
            code = wp.exit_code(handle.pid) if handle is not None else None
            while True:
                try:
                    self._ingest(job_id)
                    self._finish(job_id, code)
                    break
                except CryptotuneError:  # e.g. a full state disk: the verdict must not be lost
                    log.exception("could not record the end of job %s (will retry)", job_id)
                    await asyncio.sleep(5 * POLL_S)
        finally:
            self._release(job_id)
            self._supervisors.pop(job_id, None)
            self._handles.pop(job_id, None)
            self._wakeup.set()

    def _release(self, job_id: str) -> None:
        for uuid in [u for u, owner in self._allocated.items() if owner == job_id]:
            del self._allocated[uuid]
        self._cpu_jobs.discard(job_id)

    def _ingest(self, job_id: str) -> None:
        job = self._store.get(job_id)
        if job.is_terminal:
            return
        path = self._job_dir(job_id) / EVENTS_FILE
        events, offset = wp.read_new_events(path, job.events_offset)
        if events:
            self._store.ingest_worker_events(job_id, events, offset, expected_offset=job.events_offset)
            self._notify(job_id)

    def _ingest_safely(self, job_id: str) -> bool:
        # A failing ingest (full disk) must not end the supervisor: it would free the job's GPUs
        # while its worker still runs. The events stay in the file and are taken next time.
        try:
            self._ingest(job_id)
        except Exception:
            log.exception("could not ingest the events of job %s (will retry)", job_id)
            return False
        return True

    def _outcome(self, job_id: str) -> tuple[bool, str]:
        """(has a result event, failure reason from a failed event or "") of the latest run."""
        seq, result, reason = 0, False, ""
        while batch := self._store.events_after(job_id, seq, limit=1000):
            for event in batch:
                seq = event.seq
                if event.type == "result":
                    result = True
                elif event.type == "failed":
                    reason = str(event.data.get("reason", "")) or reason
                elif event.type == "state" and event.data.get("state") == JobState.QUEUED.value:
                    result, reason = False, ""  # a resume: only what came after counts
        return result, reason

    def _finish(self, job_id: str, code: int | None) -> None:
        """Records the verdict once no process of the job remains."""
        for _ in range(5):  # compare-and-set: a cancel may land in between; then decide again
            job = self._store.get(job_id)
            if job.is_terminal:
                return
            has_result, reason = self._outcome(job_id)
            if not has_result and self._relaunch_after_oom(job):
                return
            if job.state == JobState.CANCELLING:
                target, why = JobState.CANCELLED, "cancelled by user"
            elif has_result and not reason:
                # The adapter and report are written before `result`: a crash after it loses nothing.
                target, why = JobState.SUCCEEDED, ""
            elif job.dry_run and code == 0 and not reason:
                target, why = JobState.SUCCEEDED, ""
            elif reason:
                target, why = JobState.FAILED, reason
            else:
                if self._recover(job_id, _describe_exit(code, job.pipeline_id), count=True):
                    return
                continue
            self._store.set_worker(job_id, None, None)
            if self._store.transition(job_id, target, expected={job.state}, reason=why) is not None:
                self._notify(job_id)
                log.info("job %s %s%s", job_id, target.value, f": {why}" if why else "")
                return

    def _reconcile(self, job: Job) -> None:
        """Picks up a job a previous daemon left unfinished."""
        if job.state == JobState.QUEUED:
            return
        job_dir = self._job_dir(job.job_id)
        handle = _db_handle(job) or wp.recorded_leader(job_dir)
        if (handle is not None and wp.is_alive(handle)) or wp.job_alive(job_dir, handle):
            log.info("reattaching to job %s (worker pid %s)", job.job_id, handle.pid if handle else "?")
            if handle is not None and job.worker_pid != handle.pid:
                self._store.set_worker(job.job_id, handle.pid, handle.started_at)
            with contextlib.suppress(FileNotFoundError):
                self._stop_marker(job.job_id).unlink()
            if job.state == JobState.CANCELLING:
                self._terminate(job.job_id, handle)  # the cancel may not have reached it
            self._attach(job.job_id, job.gpu_uuids, handle)
            return
        self._ingest(job.job_id)
        has_result, reason = self._outcome(job.job_id)
        if not has_result and self._relaunch_after_oom(job):
            self._notify(job.job_id)
            return
        if job.state == JobState.CANCELLING:
            self._store.transition(job.job_id, JobState.CANCELLED, reason="cancelled by user")
        elif has_result and not reason:
            self._store.transition(job.job_id, JobState.SUCCEEDED)
        elif reason:
            self._store.transition(job.job_id, JobState.FAILED, reason=reason)
        elif job.state == JobState.RECOVERING:
            self._recover(job.job_id, "resuming an interrupted recovery", count=False)  # counted before
        elif handle is None:
            self._recover(job.job_id, "the daemon stopped before the worker started", count=False)
        elif self._stopped_by_daemon(job.job_id, handle):
            self._recover(job.job_id, "the daemon was stopped while the job ran", count=False)
        else:
            self._recover(job.job_id, "the worker ended while the daemon was down", count=True)
        self._notify(job.job_id)

    def _stopped_by_daemon(self, job_id: str, handle: wp.WorkerHandle) -> bool:
        try:
            marker = json.loads(self._stop_marker(job_id).read_text())
            return bool(marker["pid"] == handle.pid and abs(marker["started_at"] - handle.started_at) < 2)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _relaunch_after_oom(self, job: Job) -> bool:
        """Handles a multi-process job that ran out of memory (see training/oom_relaunch.py).

        Returns:
            Whether the job had such a request: it is queued again with the smaller split, or
            failed when the micro-batch was 1 already. (False: no request; decide as usual.)
        """
        if job.state not in (JobState.RUNNING, JobState.RECOVERING):
            return False  # a cancel wins; so does a verdict already recorded
        job_dir = self._job_dir(job.job_id)
        try:
            request = read_request(job_dir)
        except (OSError, ValueError) as error:
            log.warning("ignoring the out-of-memory request of job %s: %s", job.job_id, error)
            request = None
        if request is None:
            return False
        if request.can_continue:
            moved = self._recover(job.job_id, request.message, count=False, oom=request)
        else:
            self._store.set_worker(job.job_id, None, None)
            moved = (
                self._store.transition(
                    job.job_id,
                    JobState.FAILED,
                    expected={JobState.RUNNING, JobState.RECOVERING},
                    reason=request.message,
                )
                is not None
            )
            self._notify(job.job_id)
        # Removed only once acted on: a daemon crash in between finds it again.
        clear_request(job_dir)
        return moved

    def _recover(self, job_id: str, why: str, *, count: bool, oom: OomRelaunchRequest | None = None) -> bool:
        """A worker vanished without a verdict: resume the job from its newest checkpoint, within budget.

        Args:
            job_id: the job (RUNNING or RECOVERING; other states are left alone).
            why: what happened, for the state events and the failure reason.
            count: whether this was a real worker failure that uses up the retry budget.
            oom: set when a process ran out of memory: continue with its smaller split.

        Returns:
            Whether the job was moved (False: its state changed meanwhile, e.g. a cancel).
        """
        job = self._store.get(job_id)
        if job.state == JobState.RUNNING:
            moved = self._store.transition(
                job_id,
                JobState.RECOVERING,
                expected={JobState.RUNNING},
                reason=why if oom is not None else f"worker lost: {why}",
            )
            if moved is None:
                return False
            job = moved
            self._notify(job_id)
        elif job.state != JobState.RECOVERING:
            return False
        retries = self._store.increment_retries(job_id) if count else job.retries
        self._store.set_worker(job_id, None, None)
        if retries > RETRY_BUDGET:
            failed = self._store.transition(
                job_id,
                JobState.FAILED,
                expected={JobState.RECOVERING},
                reason=f"the worker was lost {retries} times; giving up after {RETRY_BUDGET} resumes "
                f"(last time: {why})",
            )
            self._notify(job_id)
            return failed is not None
        resume = ResumeSpec(output_dir=Path(job.output_dir), step=None, oom=oom)
        counted = f"retry {retries} of {RETRY_BUDGET}" if count else f"{why}; not counted as a retry"
        reason = f"resuming from the newest verified checkpoint ({counted})"
        if oom is not None:
            reason = (
                f"resuming from the newest verified checkpoint with micro-batch {oom.new_micro_batch} × "
                f"gradient accumulation {oom.new_accumulation} (was {oom.old_micro_batch} × "
                f"{oom.old_accumulation}: out of memory at step {oom.step}; same effective batch)"
            )
        self._store.update_spec(
            job_id, dataclasses.replace(JobSpec.from_json(job.spec), resume=resume).to_json()
        )
        queued = self._store.transition(
            job_id, JobState.QUEUED, expected={JobState.RECOVERING}, reason=reason
        )
        self._notify(job_id)
        self._wakeup.set()
        return queued is not None

    # -- notifications --------------------------------------------------------------------------

    def _notify(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def _wait_change(self, job_id: str, timeout: float) -> None:
        event = self._changed.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def _shutting_down(hint: str) -> CryptotuneError:
    return CryptotuneError(ErrorCode.DAEMON_SHUTTING_DOWN, f"the daemon is shutting down; {hint}")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _db_handle(job: Job) -> wp.WorkerHandle | None:
    if job.worker_pid and job.worker_started_at:
        return wp.WorkerHandle(job.worker_pid, job.worker_started_at)
    return None


def _describe_exit(code: int | None, ref: str) -> str:
    if code is None:
        return f"the worker ended without reporting a result; see 'cryptotune logs {ref}'"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the worker was killed by {name}{hint}; see 'cryptotune logs {ref}'"
    if code > 128 and code - 128 in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # The worker turns these into a clean exit (128 + signal), but no cancel was asked for.
        name = signal.Signals(code - 128).name
        return f"the worker was stopped by {name} from outside the daemon; see 'cryptotune logs {ref}'"
    return f"the worker exited with code {code} without a reason; see 'cryptotune logs {ref}'"


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
