"""The state the job engine's parts share (resources taken, workers followed, wake-ups).

:class:`~cryptotune_daemon.jobs.manager.JobManager` is composed of four parts, each in its own module:
requests (``jobs/requests.py``; chats and merged exports through ``jobs/model_workers.py``), the
scheduler (``jobs/scheduler.py``), the supervisor (``jobs/supervisor.py``) and the event and log
streams (``jobs/streams.py``). Each part is a mixin of :class:`EngineCore`, which declares the state
they share and the few methods one part calls on another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.gpus import GpuInventory
from cryptotune_daemon.jobs import worker_process as wp
from cryptotune_daemon.jobs.event_watch import EventFileWatch
from cryptotune_daemon.jobs.model import Job, JobEvent
from cryptotune_daemon.jobs.model_workers import InferencePool
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.warm_pool import WarmPool
from cryptotune_daemon.layout import STOP_MARKER
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore
from cryptotune_daemon.training.oom_relaunch import OomRelaunchRequest


class EngineCore:
    """The job engine's shared state. All methods are called from the asyncio loop."""

    _settings: DaemonSettings
    _store: JobStore
    _blobs: BlobStore
    _inventory: GpuInventory
    _changed: dict[str, asyncio.Event]
    _wakeup: asyncio.Event
    _allocated: dict[str, str]  # GPU uuid → job id
    _cpu_jobs: set[str]
    _supervisors: dict[str, asyncio.Task[None]]
    _handles: dict[str, wp.WorkerHandle | None]
    _killers: dict[str, asyncio.Task[None]]
    _blocked: set[str]
    _scheduler: asyncio.Task[None] | None
    _accepting: bool
    _loop: asyncio.AbstractEventLoop | None
    _reconciled: bool
    _chats: InferencePool
    # Called with (job id, [(type, data, ts)]) for each batch of worker events ingested (metrics).
    _event_listeners: list[Callable[[str, list[tuple[str, dict[str, Any], float]]], None]]
    _warm: WarmPool
    _event_watch: EventFileWatch
    _shared_reads: dict[tuple[str, int], list[JobEvent]]  # (job id, after seq) → stored events
    _notified: dict[str, int]  # job id → how many times _notify was called for it
    _caught_up: dict[str, tuple[int, int, bool, float]]  # job id → (seq, notified, terminal, when)

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

    def _job_dir(self, job_id: str) -> Path:
        return self._settings.jobs_dir / job_id

    def _stop_marker(self, job_id: str) -> Path:
        return self._job_dir(job_id) / STOP_MARKER

    def _notify(self, job_id: str) -> None:
        self._notified[job_id] = self._notified.get(job_id, 0) + 1
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def _wait_change(self, job_id: str, timeout: float) -> None:
        event = self._changed.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    # -- implemented by other parts: the manager and the supervisor (jobs/supervisor.py) ----------

    def _wake_from_any_thread(self) -> None:
        raise NotImplementedError

    def _launch(self, job: Job, gpu_uuids: list[str], device: str) -> None:
        raise NotImplementedError

    def _attach(
        self, job_id: str, gpu_uuids: Sequence[str], handle: wp.WorkerHandle | None, *, on_ray: bool = False
    ) -> None:
        raise NotImplementedError

    def _terminate(self, job_id: str, handle: wp.WorkerHandle | None) -> None:
        raise NotImplementedError

    def _ingest(self, job_id: str) -> None:
        raise NotImplementedError

    def _reconcile(self, job: Job) -> None:
        raise NotImplementedError

    def _recover(
        self,
        job_id: str,
        why: str,
        *,
        count: bool,
        oom: OomRelaunchRequest | None = None,
        lost_node: str = "",
    ) -> bool:
        raise NotImplementedError


def _shutting_down(hint: str) -> CryptotuneError:
    return CryptotuneError(ErrorCode.DAEMON_SHUTTING_DOWN, f"the daemon is shutting down; {hint}")


def _db_handle(job: Job) -> wp.WorkerHandle | None:
    if job.worker_pid and job.worker_started_at:
        return wp.WorkerHandle(job.worker_pid, job.worker_started_at)
    return None
