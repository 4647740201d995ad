"""Wakes a job's supervisor as soon as its worker appends to ``events.jsonl`` (inotify on Linux).

One inotify descriptor for the whole daemon, read by the asyncio loop; each followed job's
directory is watched (so an event file created late is seen too) and a write to its event file
sets that job's :class:`asyncio.Event`. Where inotify is unavailable (not Linux, the package
missing, the watch limit reached) the supervisor keeps polling the file's size instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from cryptotune_daemon.layout import EVENTS_FILE

log = logging.getLogger(__name__)


class EventFileWatch:
    """Maps inotify watches on job directories to per-job wake-up events."""

    def __init__(self) -> None:
        self._inotify: Any = None
        self._flags = 0
        self._by_wd: dict[int, str] = {}
        self._wd_of: dict[str, int] = {}
        self._woken: dict[str, asyncio.Event] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Opens the inotify descriptor and reads it from ``loop``; False where inotify is unavailable."""
        try:
            from inotify_simple import INotify, flags
        except ImportError:
            return False
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as error:
            log.warning("inotify is unavailable (%s): event files are polled", error)
            return False
        self._flags = flags.MODIFY | flags.CLOSE_WRITE | flags.CREATE | flags.MOVED_TO
        loop.add_reader(self._inotify.fileno(), self._read)
        return True

    def follow(self, job_id: str, job_dir: Path) -> asyncio.Event | None:
        """Starts waking ``job_id`` on writes to its event file; None: poll it instead."""
        if self._inotify is None:
            return None
        try:
            wd = int(self._inotify.add_watch(str(job_dir), self._flags))
        except OSError as error:  # e.g. the per-user watch limit
            log.warning("cannot watch %s (%s): its events are polled", job_dir, error)
            return None
        event = self._woken.setdefault(job_id, asyncio.Event())
        self._by_wd[wd] = job_id
        self._wd_of[job_id] = wd
        return event

    def unfollow(self, job_id: str) -> None:
        """Stops watching the job's directory."""
        wd = self._wd_of.pop(job_id, None)
        self._woken.pop(job_id, None)
        if wd is None:
            return
        self._by_wd.pop(wd, None)
        if self._inotify is not None:
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(wd)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stops reading and closes the descriptor."""
        if self._inotify is None:
            return
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self._inotify.fileno())
        with contextlib.suppress(OSError):
            self._inotify.close()
        self._inotify = None

    def _read(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except (OSError, ValueError):
            return
        for event in events:
            if event.name != EVENTS_FILE:
                continue
            job_id = self._by_wd.get(event.wd)
            woken = self._woken.get(job_id) if job_id is not None else None
            if woken is not None:
                woken.set()
