"""The job engine's request API: submit, get, list, cancel, export, chat (the JobService's domain calls)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs import worker_process as wp
from cryptotune_daemon.jobs.chat_policy import adapter_of
from cryptotune_daemon.jobs.engine import EngineCore, _db_handle, _shutting_down
from cryptotune_daemon.jobs.model import Job, JobState
from cryptotune_daemon.jobs.model_workers import ChatEvent, ExportFile, ExportStep, merged_export
from cryptotune_daemon.jobs.serving import ServingCheck, check_vllm_adapter
from cryptotune_daemon.jobs.submission import SubmitRequest, prepare
from cryptotune_daemon.layout import ADAPTER_DIR, EXPORTED_FILES
from cryptotune_daemon.training.model_request import GenerateParams
from cryptotune_daemon.worker.spec import JobSpec


class JobRequests(EngineCore):
    """What clients ask of the job engine."""

    def owners(self) -> dict[str, str]:
        """Which job owns each allotted GPU (uuid → job id)."""
        return dict(self._allocated)

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
                if job.job_id in self._supervisors:  # a Ray job's driver, waiting for room: end it
                    self._terminate(job.job_id, self._handles.get(job.job_id))
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

    def serving_check(self, ref: str) -> ServingCheck:
        """Whether vLLM would load the job's adapter (for Qwen3), and what its serve command needs."""
        from cryptotune_daemon.config import load_config

        job = self.get(ref)
        adapter = adapter_of(job, "export")
        try:
            adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CryptotuneError(
                ErrorCode.JOB_STATE_CONFLICT, f"cannot read {adapter / 'adapter_config.json'}: {error}"
            ) from None
        spec = JobSpec.from_json(job.spec)
        base = load_config(spec.config_yaml, spec.config_name).model.model_name
        return check_vllm_adapter(adapter_config, base_model=base, name=job.pipeline_id)

    def export_merged(self, ref: str) -> AsyncIterator[ExportStep | ExportFile]:
        """The job's base model with its adapter merged in, made by an export worker: progress, then files."""
        job = self.get(ref)
        adapter_of(job, "export")
        return merged_export(job, self._settings)

    def chat(self, ref: str, params: GenerateParams) -> AsyncIterator[ChatEvent]:
        """Answers a chat with the job's model through an inference worker (see ``jobs/model_workers.py``)."""
        if not self._accepting:
            raise _shutting_down("chat again later")
        return self._chats.chat(self.get(ref), params)

    def loaded_models(self) -> dict[str, int]:
        """Job id → pid of the inference worker that holds its model."""
        return self._chats.loaded()
