"""The job's event log: JSON lines appended by rank 0 and tailed by the daemon."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)
Listener = Callable[[str, Mapping[str, Any]], None]


def _finite(value: Any) -> Any:
    """Replaces NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class EventWriter:
    """Appends ``{"type", "ts", "data"}`` lines to the events file, one flushed line per event.

    Only rank 0 writes: other ranks get a disabled writer whose ``emit`` does nothing, so call
    sites need no rank checks. Thread-safe (the GPU sampler thread emits too).
    """

    def __init__(self, path: Path | None, *, enabled: bool = True) -> None:
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._listeners: list[Listener] = []
        if enabled and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    @property
    def enabled(self) -> bool:
        """Whether this writer writes anything (rank 0 with an events path)."""
        return self._file is not None

    def add_listener(self, listener: Listener) -> None:
        """Calls ``listener(type, data)`` after each event is written (the metrics reporters)."""
        self._listeners.append(listener)

    def emit(self, event_type: str, data: Mapping[str, Any] | None = None) -> None:
        """Appends one event and flushes it so the daemon sees it at once.

        Args:
            event_type: one of the contract's event types (``progress``, ``stage_started``, ...).
            data: the JSON-serialisable payload; non-finite floats become null.
        """
        if self._file is None:
            return
        payload = _finite(dict(data or {}))
        line = json.dumps(
            {"type": event_type, "ts": time.time(), "data": payload},
            ensure_ascii=False,
            allow_nan=False,
            default=str,
        )
        with self._lock:
            # One write call per complete line: the daemon only ever reads whole lines.
            self._file.write(line + "\n")
            self._file.flush()
        for listener in self._listeners:
            try:
                listener(event_type, payload)
            except Exception:  # reporting must never stop training
                log.exception("an event listener failed on a %s event", event_type)

    def warning(self, message: str) -> None:
        """Emits a ``warning`` event."""
        self.emit("warning", {"message": message})

    def log(self, message: str) -> None:
        """Emits a ``log`` event."""
        self.emit("log", {"message": message})

    def close(self) -> None:
        """Closes the file; later emits are dropped."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
