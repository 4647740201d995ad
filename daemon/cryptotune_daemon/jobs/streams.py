"""The event and log streams: a job's stored then live events, its worker log, files in export chunks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.engine import EngineCore, _shutting_down
from cryptotune_daemon.jobs.model import JobEvent
from cryptotune_daemon.layout import WORKER_LOG

EXPORT_CHUNK = 1024 * 1024
LOG_CHUNK = 1024 * 1024
LOG_TAIL_BYTES = 256 * 1024
# Reads of stored events that watchers share (see Streams._events_after): the newest ones are kept.
SHARED_READS = 256
# How long "no event after seq S; terminal or not" is shared by watchers woken together, unless a
# change is notified first (every stored event is). Bounds the delay of a change nobody notified.
CAUGHT_UP_TTL_S = 0.25


class Streams(EngineCore):
    """Streams a job's events and log lines to watchers."""

    async def watch(self, ref: str, after_seq: int) -> AsyncIterator[JobEvent]:
        """Stored events after ``after_seq``, then live ones, until the job is terminal."""
        if after_seq < 0:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, "after_seq must be >= 0")
        job_id = self.get(ref).job_id
        seq = after_seq
        while True:
            events = self._events_after(job_id, seq)
            for event in events:
                seq = event.seq
                yield event
            if events:
                continue
            if self._caught_up_terminal(job_id, seq):
                if not self._store.events_after(job_id, seq, limit=1):
                    return
                continue
            if not self._accepting:
                # End the stream now rather than hold the shutdown for the server's grace period.
                raise _shutting_down(f"watch again with after_seq={seq} once it is back")
            await self._wait_change(job_id, 1.0)

    def log_tail(self, ref: str, lines: int) -> list[str]:
        """The last ``lines`` lines of the job's worker log (at most the last ``LOG_TAIL_BYTES``)."""
        path = self._settings.jobs_dir / self.get(ref).job_id / WORKER_LOG
        try:
            with path.open("rb") as handle:
                size = handle.seek(0, 2)
                handle.seek(max(0, size - LOG_TAIL_BYTES))
                data = handle.read()
        except FileNotFoundError:
            return []
        text = data.decode("utf-8", errors="replace").splitlines()
        if size > LOG_TAIL_BYTES and text:
            text = text[1:]  # the first line is probably cut
        return text[-lines:] if lines > 0 else []

    def _events_after(self, job_id: str, seq: int) -> list[JobEvent]:
        """Stored events after ``seq``; one read (and one list) shared by every watcher at that seq.

        Watchers of a job wake together and ask for the same ``seq``: the first reads the store, the
        others get the same list. A non-empty answer never goes stale (stored events are immutable
        and seqs gap-free; a watcher asks again after the last one it got); an empty one is not kept.
        """
        key = (job_id, seq)
        shared = self._shared_reads.get(key)
        if shared is not None:
            return shared
        if self._known_caught_up(job_id, seq) is not None:
            return []  # another watcher at this seq found nothing new since the last change
        notified = self._notified.get(job_id, 0)  # before the read: a change during it is not missed
        events = self._store.events_after(job_id, seq, limit=500)
        if events:
            self._shared_reads[key] = events
            if len(self._shared_reads) > SHARED_READS:
                del self._shared_reads[next(iter(self._shared_reads))]
        else:
            terminal = self._store.get(job_id).is_terminal
            self._caught_up[job_id] = (seq, notified, terminal, time.monotonic())
        return events

    def _known_caught_up(self, job_id: str, seq: int) -> bool | None:
        """Whether the job was terminal when a watcher last found no event after ``seq``, if that
        is still current (no change notified since, and recent); None when it must be read."""
        known = self._caught_up.get(job_id)
        if known is None:
            return None
        at_seq, notified, terminal, when = known
        if at_seq != seq or notified != self._notified.get(job_id, 0):
            return None
        if time.monotonic() - when > CAUGHT_UP_TTL_S:
            return None
        return terminal

    def _caught_up_terminal(self, job_id: str, seq: int) -> bool:
        """Whether the job is terminal, for a watcher holding every event up to ``seq``."""
        known = self._known_caught_up(job_id, seq)
        return self._store.get(job_id).is_terminal if known is None else known

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
