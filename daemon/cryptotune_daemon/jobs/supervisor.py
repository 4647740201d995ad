"""The supervisor: launches workers, follows them to their end, reattaches and recovers after a crash.

Reliability rules (see docs/reliability.md):

- A worker runs in its own session; every process of it holds the job lock
  (:mod:`~cryptotune_daemon.jobs.worker_process`), so a job never gets a second worker and its
  GPUs return to the pool only when none of its processes remains.
- A daemon restart reattaches to live workers; a job whose worker is gone without a verdict
  goes RECOVERING and resumes from its newest verified checkpoint. Only a real worker death
  counts against ``RETRY_BUDGET``: a worker that was never started, or one ended by the
  daemon's own graceful stop (systemd's KillMode=mixed), is resumed without counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs import worker_process as wp
from cryptotune_daemon.jobs.engine import EngineCore, _db_handle
from cryptotune_daemon.jobs.model import Job, JobState
from cryptotune_daemon.jobs.verdict import WorkerOutcome, decide_verdict
from cryptotune_daemon.jobs.warm_pool import may_use_warm_worker
from cryptotune_daemon.layout import EVENTS_FILE, SPEC_FILE, WORKER_LOG
from cryptotune_daemon.training.oom_relaunch import OomRelaunchRequest, clear_request, read_request
from cryptotune_daemon.worker.ray_placement import NODE_LOST_EVENT, PLACED_EVENT, namespace_for
from cryptotune_daemon.worker.spec import JobSpec, ResumeSpec

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a worker's liveness is checked
# Where inotify is unavailable (jobs/event_watch.py), how often a running worker's event file is
# checked for growth (one stat call): what a watcher then waits at most beyond the worker writing it.
# With inotify the supervisor wakes on the write itself and checks the size at least every POLL_S.
EVENT_POLL_S = 0.05
# Resumes after real worker deaths (killed, crashed) before a job fails; daemon restarts do not count.
RETRY_BUDGET = 3


class Supervisor(EngineCore):
    """Launches, follows, reattaches to and recovers the workers of jobs."""

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
        on_ray = JobSpec.from_json(job.spec).on_ray
        # A job on Ray stays QUEUED until its driver reports its placement group reserved (_ingest).
        running = (
            job
            if on_ray
            else self._store.transition(job.job_id, JobState.RUNNING, expected={JobState.QUEUED})
        )
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
            handle, warm = self._start_worker(spec_path, world, env, job_dir, on_ray=on_ray)
        except wp.WorkerStillRunning as error:
            self._recover(job.job_id, str(error), count=False)
            return
        except (OSError, CryptotuneError) as error:
            self._store.transition(job.job_id, JobState.FAILED, reason=f"could not start the worker: {error}")
            self._notify(job.job_id)
            return
        # Follow it first: whatever happens to the bookkeeping below, the worker is supervised and
        # its resources stay taken. (A restarted daemon finds it through worker.pids anyway.)
        self._attach(job.job_id, gpu_uuids, handle, on_ray=on_ray)
        try:
            self._store.set_worker(job.job_id, handle.pid, handle.started_at)
            self._store.set_gpus(job.job_id, gpu_uuids)
        except CryptotuneError:
            log.exception("could not record the worker of job %s", job.job_id)
        how = "in warm worker" if warm else "Ray driver pid" if on_ray else "pid"
        log.info("job %s started (%s %s, %s, world size %s)", job.job_id, how, handle.pid, device, world)

    def _start_worker(
        self, spec_path: Path, world: int, env: dict[str, str], job_dir: Path, *, on_ray: bool = False
    ) -> tuple[wp.WorkerHandle, bool]:
        """Hands the job to a warm worker when it may use one and one is idle, else launches it cold
        (a job on Ray: its driver, see worker/ray_driver.py).

        Returns:
            The leader and whether it is a warm worker.
        """
        log_path = job_dir / WORKER_LOG
        if on_ray:
            return wp.launch(spec_path, world, log_path, env, job_dir, ray=self._ray_target()), False
        if may_use_warm_worker(world, self._warm.size):
            warm = self._warm.take()
            self._warm.fill()  # the replacement imports while this job runs
            if warm is not None:
                try:
                    return wp.launch_warm(warm.pid, warm.channel, spec_path, log_path, env, job_dir), True
                except OSError as error:
                    log.warning("warm worker %s could not take the job (%s): cold start", warm.pid, error)
        return wp.launch(spec_path, world, log_path, env, job_dir), False

    def _ray_target(self) -> wp.RayTarget:
        address = self._settings.ray_address
        if address is None:
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                "the job spans machines (parallel.nodes > 1) but this daemon was started without "
                "--ray-address",
            )
        return wp.RayTarget(address, namespace_for(self._settings.state_dir), self._settings.ray_node_wait_s)

    def _attach(
        self, job_id: str, gpu_uuids: Sequence[str], handle: wp.WorkerHandle | None, *, on_ray: bool = False
    ) -> None:
        """Takes the job's resources and follows its worker until no process of it remains.

        A job on Ray takes nothing of this machine: its ranks run in the cluster's bundles.
        """
        for uuid in gpu_uuids:
            self._allocated[uuid] = job_id
        if not gpu_uuids and not on_ray:
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
            woken = self._event_watch.follow(job_id, job_dir)  # None: poll the file's size
            loop = asyncio.get_running_loop()
            while wp.is_alive(handle) if handle is not None else wp.lock_held(job_dir):
                liveness_due = loop.time() + POLL_S
                while (remaining := liveness_due - loop.time()) > 0:
                    if woken is not None:
                        woken.clear()  # before the size is read: a write after it wakes us again
                    size = _file_size(job_dir / EVENTS_FILE)
                    if size != events_size:
                        if not self._ingest_safely(job_id):
                            await asyncio.sleep(POLL_S)  # e.g. a full disk: retry at a calmer pace
                            break
                        events_size = size
                    if woken is None:
                        await asyncio.sleep(min(EVENT_POLL_S, remaining))
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(woken.wait(), remaining)
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
            self._event_watch.unfollow(job_id)
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
            if job.state == JobState.QUEUED and any(kind == PLACED_EVENT for kind, _, _ in events):
                placed = next(data for kind, data, _ in events if kind == PLACED_EVENT)
                nodes = placed.get("nodes")
                where = f" on {len(nodes)} node(s)" if isinstance(nodes, list) else ""
                if self._store.transition(
                    job_id,
                    JobState.RUNNING,
                    expected={JobState.QUEUED},
                    reason=f"the Ray placement group is reserved{where}",
                ):
                    self._notify(job_id)
            for listener in self._event_listeners:
                try:
                    listener(job_id, events)
                except Exception:  # metrics must never stop the supervisor
                    log.exception("an event listener failed on job %s", job_id)

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
        result, reason, _ = self._run_outcome(job_id)
        return result, reason

    def _run_outcome(self, job_id: str) -> tuple[bool, str, str]:
        """:meth:`_outcome` and the message of the latest run's lost node ("" when none; Ray jobs)."""
        seq, result, reason, lost = 0, False, "", ""
        while batch := self._store.events_after(job_id, seq, limit=1000):
            for event in batch:
                seq = event.seq
                if event.type == "result":
                    result = True
                elif event.type == "failed":
                    reason = str(event.data.get("reason", "")) or reason
                elif event.type == NODE_LOST_EVENT:
                    lost = str(event.data.get("message", "")) or "a node was lost"
                elif event.type == "state" and event.data.get("state") == JobState.QUEUED.value:
                    result, reason, lost = False, "", ""  # a resume: only what came after counts
        return result, reason, lost

    def _finish(self, job_id: str, code: int | None) -> None:
        """Records the verdict once no process of the job remains."""
        for _ in range(5):  # compare-and-set: a cancel may land in between; then decide again
            job = self._store.get(job_id)
            if job.is_terminal:
                return
            has_result, reason, lost = self._run_outcome(job_id)
            if not has_result and self._relaunch_after_oom(job):
                return
            if job.state == JobState.QUEUED:  # a Ray driver that ended before its ranks were placed
                self._store.set_worker(job_id, None, None)
                why = reason or (
                    f"the Ray job driver ended before the job's placement group was reserved (exit code "
                    f"{code}); see 'cryptotune logs {job.pipeline_id}'"
                )
                if self._store.transition(job_id, JobState.FAILED, expected={JobState.QUEUED}, reason=why):
                    self._notify(job_id)
                    return
                continue
            if lost and not has_result and not reason and job.state == JobState.RUNNING:
                if self._recover(job_id, lost, count=True, lost_node=lost):
                    return
                continue
            verdict = decide_verdict(
                WorkerOutcome(
                    state=job.state,
                    has_result=has_result,
                    failure=reason,
                    dry_run=job.dry_run,
                    exit_code=code,
                    followed=True,
                    ref=job.pipeline_id,
                )
            )
            target, why = verdict.target, verdict.reason
            if target == JobState.RECOVERING:
                if self._recover(job_id, why, count=verdict.count_retry):
                    return
                continue
            self._store.set_worker(job_id, None, None)
            if self._store.transition(job_id, target, expected={job.state}, reason=why) is not None:
                self._notify(job_id)
                log.info("job %s %s%s", job_id, target.value, f": {why}" if why else "")
                return

    def _reconcile(self, job: Job) -> None:
        """Picks up a job a previous daemon left unfinished."""
        on_ray = JobSpec.from_json(job.spec).on_ray
        job_dir = self._job_dir(job.job_id)
        if job.state == JobState.QUEUED:
            leader = _db_handle(job) or wp.recorded_leader(job_dir)
            if on_ray and leader is not None and wp.is_alive(leader):
                log.info("reattaching to the Ray driver of queued job %s (pid %s)", job.job_id, leader.pid)
                self._attach(job.job_id, [], leader, on_ray=True)  # it waits for its placement group
            return
        handle = _db_handle(job) or wp.recorded_leader(job_dir)
        if (handle is not None and wp.is_alive(handle)) or wp.job_alive(job_dir, handle):
            log.info("reattaching to job %s (worker pid %s)", job.job_id, handle.pid if handle else "?")
            if handle is not None and job.worker_pid != handle.pid:
                self._store.set_worker(job.job_id, handle.pid, handle.started_at)
            with contextlib.suppress(FileNotFoundError):
                self._stop_marker(job.job_id).unlink()
            if job.state == JobState.CANCELLING:
                self._terminate(job.job_id, handle)  # the cancel may not have reached it
            self._attach(job.job_id, job.gpu_uuids, handle, on_ray=on_ray)
            return
        self._ingest(job.job_id)
        has_result, reason, lost = self._run_outcome(job.job_id)
        if not has_result and self._relaunch_after_oom(job):
            self._notify(job.job_id)
            return
        verdict = decide_verdict(
            WorkerOutcome(
                state=job.state,
                has_result=has_result,
                failure=reason,
                dry_run=job.dry_run,
                exit_code=None,  # only the daemon that launched a worker reaps its exit code
                followed=False,
                started=handle is not None,
                stopped_by_daemon=handle is not None and self._stopped_by_daemon(job.job_id, handle),
                ref=job.pipeline_id,
            )
        )
        if verdict.target == JobState.RECOVERING:
            why = lost or verdict.reason
            self._recover(job.job_id, why, count=verdict.count_retry or bool(lost), lost_node=lost)
        else:
            self._store.transition(job.job_id, verdict.target, reason=verdict.reason)
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

    def _recover(
        self,
        job_id: str,
        why: str,
        *,
        count: bool,
        oom: OomRelaunchRequest | None = None,
        lost_node: str = "",
    ) -> bool:
        """A worker vanished without a verdict: resume the job from its newest checkpoint, within budget.

        Args:
            job_id: the job (RUNNING or RECOVERING; other states are left alone).
            why: what happened, for the state events and the failure reason.
            count: whether this was a real worker failure that uses up the retry budget.
            oom: set when a process ran out of memory: continue with its smaller split.
            lost_node: set when a job on Ray lost a node (the message naming it): the resumed
                driver waits at most ``--ray-node-wait-s`` for room, then fails naming it.

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
        resume = ResumeSpec(output_dir=Path(job.output_dir), step=None, oom=oom, lost_node=lost_node)
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


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1
