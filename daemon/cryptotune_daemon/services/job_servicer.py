"""JobService: submit, inspect, cancel, follow, export and chat with training jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc

from cryptotune.proto.v1 import job_pb2, job_pb2_grpc
from cryptotune_daemon.jobs.manager import JobManager
from cryptotune_daemon.jobs.model import JobEvent
from cryptotune_daemon.jobs.model_workers import ExportStep
from cryptotune_daemon.jobs.streams import chunks_of
from cryptotune_daemon.services import serde
from cryptotune_daemon.services.error_catalog import streaming, unary
from cryptotune_daemon.services.validation import config_size, int_range, job_ref

MAX_LIST_LIMIT = 1000
# Event messages shared by every WatchJob stream (one conversion per event, not one per watcher).
SHARED_EVENT_MESSAGES = 4096


class JobServicer(job_pb2_grpc.JobServiceServicer):
    """Translates JobService calls to the job manager."""

    def __init__(self, manager: JobManager) -> None:
        self._jobs = manager
        self._event_messages: dict[tuple[str, int], job_pb2.JobEvent] = {}

    def _event_message(self, event: JobEvent) -> job_pb2.JobEvent:
        """The event's message, built once and shared by every stream that sends it (never mutated)."""
        key = (event.job_id, event.seq)
        message = self._event_messages.get(key)
        if message is None:
            message = self._event_messages[key] = serde.event(event)
            if len(self._event_messages) > SHARED_EVENT_MESSAGES:
                del self._event_messages[next(iter(self._event_messages))]
        return message

    @unary
    async def SubmitJob(
        self, request: job_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> job_pb2.SubmitJobResponse:
        config_size(request.config_yaml)
        # Validation parses YAML and may read the output dir: off the event loop.
        remote = not context.peer().startswith("unix:")  # TCP: the client's directory is elsewhere
        submission = serde.submit_request(request, remote=remote)
        job, existing = await asyncio.to_thread(self._jobs.submit, submission)
        return job_pb2.SubmitJobResponse(job=serde.job(job), existing=existing)

    @unary
    async def GetJob(
        self, request: job_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> job_pb2.Job:
        return serde.job(self._jobs.get(job_ref(request.job)))

    @unary
    async def ListJobs(
        self, request: job_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> job_pb2.ListJobsResponse:
        limit = int_range(request.limit, "limit", 0, MAX_LIST_LIMIT, "0 means the default, 50")
        return job_pb2.ListJobsResponse(jobs=[serde.job(j) for j in self._jobs.list_jobs(limit)])

    @unary
    async def CancelJob(
        self, request: job_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> job_pb2.Job:
        return serde.job(self._jobs.cancel(job_ref(request.job)))

    @streaming
    async def WatchJob(
        self, request: job_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[job_pb2.JobEvent]:
        async for event in self._jobs.watch(job_ref(request.job), request.after_seq):
            yield self._event_message(event)

    @streaming
    async def StreamLogs(
        self, request: job_pb2.StreamLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[job_pb2.LogLine]:
        async for line in self._jobs.logs(job_ref(request.job), request.follow, request.skip_lines):
            yield job_pb2.LogLine(line=line)

    @streaming
    async def ExportJob(
        self, request: job_pb2.ExportJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[job_pb2.ExportChunk]:
        ref = job_ref(request.job)
        if request.merged:
            async for item in self._jobs.export_merged(ref):
                if isinstance(item, ExportStep):
                    yield serde.export_progress(item)
                else:
                    for chunk in _file_chunks(item.relative, item.path):
                        yield chunk
            return
        yield serde.serving_check(self._jobs.serving_check(ref))
        for relative, path in self._jobs.export_files(ref):
            for chunk in _file_chunks(relative, path):
                yield chunk

    @streaming
    async def Generate(
        self, request: job_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[job_pb2.GenerateChunk]:
        params = serde.generate_params(request)
        async for event in self._jobs.chat(job_ref(request.job), params):
            yield serde.chat_chunk(event)


def _file_chunks(relative: str, path: Path) -> Iterator[job_pb2.ExportChunk]:
    """One file as ExportChunks; the last carries ``last=True``, the first the file's size."""
    size = path.stat().st_size
    pieces = chunks_of(path)
    current = next(pieces)
    first = True
    # One chunk of look-ahead so that the last chunk of each file carries last=True.
    for following in pieces:
        yield job_pb2.ExportChunk(path=relative, data=current, size=size if first else 0)
        first = False
        current = following
    yield job_pb2.ExportChunk(path=relative, data=current, last=True, size=size if first else 0)
