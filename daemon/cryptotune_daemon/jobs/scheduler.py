"""The scheduler: starts queued jobs in strict FIFO order when their GPUs (or a CPU slot) are free."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cryptotune_daemon.jobs import worker_process as wp
from cryptotune_daemon.jobs.engine import EngineCore
from cryptotune_daemon.jobs.model import JobState
from cryptotune_daemon.worker.spec import JobSpec

log = logging.getLogger(__name__)


class Scheduler(EngineCore):
    """Gives each queued job whole GPUs (or a CPU slot) and hands it to the supervisor's launch."""

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
            spec = JobSpec.from_json(job.spec)
            if spec.on_ray:
                # Its ranks take the Ray cluster's resources, not this machine's: it never holds up
                # the local queue. Its driver waits (QUEUED) for the placement group.
                if job.job_id not in self._supervisors and not wp.job_alive(self._job_dir(job.job_id), None):
                    self._launch(job, [], "cpu")
                continue
            world = spec.world_size
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
