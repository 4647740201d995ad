"""Applies the config's ``system`` logging keys to a worker process: verbosity and the log directory."""

from __future__ import annotations

import logging
from pathlib import Path

from cryptotune_daemon.config.schema import SystemConfig
from cryptotune_daemon.config.system_paths import WORKER_LOG_FILE, logging_dir

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "cryptotune-logging-dir"
log = logging.getLogger(__name__)


def apply_system_logging(system: SystemConfig, output_dir: Path, *, rank: int = 0) -> Path:
    """Sets the worker's log level to ``system.log_level`` and copies its log into ``system.logging_dir``.

    Every handler of the root logger (stderr, which the daemon keeps as the job's log) takes the
    level; rank 0 writes ``worker.log`` in the logging directory, other ranks ``worker-rank<N>.log``.
    Calling it again (a resumed stage) replaces the file handler instead of adding a second one.

    Returns:
        The log file written.
    """
    level = getattr(logging, system.log_level)
    root = logging.getLogger()
    root.setLevel(level)
    close_system_logging()
    for handler in root.handlers:
        handler.setLevel(level)
    directory = logging_dir(output_dir, system.logging_dir)
    directory.mkdir(parents=True, exist_ok=True)
    name = WORKER_LOG_FILE if rank == 0 else f"worker-rank{rank}.log"
    path = directory / name
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.set_name(_HANDLER_NAME)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    log.debug("log level %s; this log is also written to %s", system.log_level, path)
    return path


def close_system_logging() -> None:
    """Closes the log file :func:`apply_system_logging` opened (at the end of the pipeline)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()
