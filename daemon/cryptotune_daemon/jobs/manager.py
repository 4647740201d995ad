"""The daemon's job engine, assembled from its parts (requests, scheduler, supervisor, streams)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from cryptotune_daemon.gpus import GpuInventory
from cryptotune_daemon.jobs import worker_process as wp
from cryptotune_daemon.jobs.event_watch import EventFileWatch
from cryptotune_daemon.jobs.model_workers import InferencePool
from cryptotune_daemon.jobs.requests import JobRequests
from cryptotune_daemon.jobs.scheduler import Scheduler
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.streams import Streams
from cryptotune_daemon.jobs.supervisor import Supervisor
from cryptotune_daemon.jobs.warm_pool import WarmPool
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore

log = logging.getLogger(__name__)


class JobManager(JobRequests, Scheduler, Supervisor, Streams):
    """The daemon's job engine: its lifecycle (start, stop) over the parts it is made of.

    All public methods are called from the asyncio loop. The reliability rules are in
    ``jobs/supervisor.py`` and docs/reliability.md.
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
        self._chats = InferencePool(settings, inventory, self._allocated, self._wakeup.set)
        self._event_listeners = []
        self._event_watch = EventFileWatch()
        self._shared_reads = {}
        self._notified = {}
        self._caught_up = {}
        self._warm = WarmPool(settings.warm_workers, settings.cache_dir, settings.warm_log_path, os.environ)

    def add_event_listener(
        self, listener: Callable[[str, list[tuple[str, dict[str, Any], float]]], None]
    ) -> None:
        """Calls ``listener(job_id, events)`` with each batch of worker events as it is stored."""
        self._event_listeners.append(listener)

    async def start(self) -> None:
        """Reconciles jobs left by a previous daemon, then starts the scheduler."""
        self._settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._warm.fill()  # first: their imports run while the daemon reconciles and serves
        self._event_watch.start(asyncio.get_running_loop())
        delay = self._settings.faults.reconcile_delay_s
        if delay > 0:  # injected fault (tests): widens the window in which health must say NOT_SERVING
            await asyncio.sleep(delay)
        for job in self._store.list_nonterminal():
            try:
                self._reconcile(self._store.get(job.job_id))
            except Exception:  # one broken job must not keep the daemon from serving the others
                log.exception("could not reconcile job %s", job.job_id)
        self._reconciled = True
        self._loop = asyncio.get_running_loop()
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="scheduler")
        self._chats.start()
        self._wakeup.set()

    async def stop(self) -> None:
        """Stops scheduling and following workers; running workers keep training (see docs).

        Every followed job's events are ingested first, so the store is current, and a marker
        records that this daemon, not a failure, stopped following the worker: under systemd
        (KillMode=mixed) the workers are ended right after, and the next daemon resumes those jobs
        without counting a retry.
        """
        self._accepting = False
        await self._chats.stop()
        self._warm.close()
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
        self._event_watch.close(asyncio.get_running_loop())

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
