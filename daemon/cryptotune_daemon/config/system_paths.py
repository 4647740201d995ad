"""Decides where a job's files go from ``--output-dir``, the ``system`` section and the client's directory.

Precedence of the output directory: ``--output-dir`` when the client gives one; else
``system.output_dir`` when the config sets it; else ``./training_output`` (the CLI's default).
A relative path is resolved against the client's working directory, which the client sends
with the submission. ``system.logging_dir`` and ``system.cache_dir`` are relative to the output
directory unless absolute. Pure functions: the callers check the results against the daemon's
allowed roots.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

DEFAULT_OUTPUT_DIR = "training_output"
# The worker's own log inside system.logging_dir.
WORKER_LOG_FILE = "worker.log"


class OutputDirSource(StrEnum):
    """Which setting chose a job's output directory."""

    OPTION = "--output-dir"
    CONFIG = "system.output_dir"
    DEFAULT = "default"


@dataclass(frozen=True)
class OutputDirChoice:
    """The output directory a submission asks for (absolute, not yet checked) and where it came from."""

    path: str
    source: OutputDirSource


def _shown(value: str, limit: int = 80) -> str:
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"


def _against_cwd(path: str, client_cwd: str, what: str) -> str:
    if path.startswith("~"):
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"{what} {_shown(path)} starts with '~', which the daemon does not expand; give an absolute path",
        )
    if posixpath.isabs(path):
        return posixpath.normpath(path)
    if not client_cwd:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"{what} {_shown(path)} is relative, but the client did not send its working directory; "
            "give an absolute path (or update the client)",
        )
    if not posixpath.isabs(client_cwd):
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"the client's working directory {_shown(client_cwd)} is not an absolute path",
        )
    return posixpath.normpath(posixpath.join(client_cwd, path))


def choose_output_dir(
    option: str, configured: str | None, client_cwd: str, *, remote: bool
) -> OutputDirChoice:
    """The output directory of a new pipeline, by precedence (see the module docstring).

    Args:
        option: ``--output-dir`` as sent (the client resolves it; the caller refuses it unless
            absolute); "" when not given.
        configured: ``system.output_dir`` from the config; None when the config does not set it.
        client_cwd: the client's working directory (absolute); "" from clients that do not send it.
        remote: whether the client came over TCP (its working directory is on another machine).

    Raises:
        CryptotuneError: REQUEST_INVALID for a relative ``system.output_dir`` from a remote client, or
            a relative path with no working directory to resolve it against.
    """
    if option:
        # The client resolved it on its machine; the caller insists that it is absolute.
        return OutputDirChoice(option, OutputDirSource.OPTION)
    if configured is not None:
        if remote and not posixpath.isabs(configured):
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID,
                f"system.output_dir {_shown(configured)} is relative, but this client is remote (TCP), so "
                "the daemon cannot tell what it is relative to; set system.output_dir to an absolute "
                "path on the daemon's machine, or pass -o/--output-dir",
            )
        return OutputDirChoice(
            _against_cwd(configured, client_cwd, "system.output_dir"), OutputDirSource.CONFIG
        )
    if not client_cwd:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            "output_dir is required: give an absolute directory for the job's output, set "
            "system.output_dir in the config, or send the client's working directory (client_cwd)",
        )
    return OutputDirChoice(
        _against_cwd(DEFAULT_OUTPUT_DIR, client_cwd, "output_dir"), OutputDirSource.DEFAULT
    )


def under_output_dir(output_dir: Path, configured: str) -> Path:
    """``configured`` (``system.logging_dir`` or ``system.cache_dir``) made absolute: relative paths are
    taken from the output directory. ``..`` parts are resolved, so the result can be checked against
    allowed roots."""
    path = Path(configured)
    return Path(posixpath.normpath(str(path if path.is_absolute() else output_dir / path)))


def logging_dir(output_dir: Path, configured: str) -> Path:
    """Where the worker writes its log (``system.logging_dir``)."""
    return under_output_dir(output_dir, configured)


def data_cache_dir(output_dir: Path, configured: str | None, shared: Path) -> Path:
    """Where the tokenized-data cache lives: ``system.cache_dir`` when set, else the daemon's shared cache."""
    return shared if configured is None else under_output_dir(output_dir, configured)


def check_job_dirs(
    output_dir: Path, logging: str, cache: str | None, roots: tuple[Path, ...] | list[Path]
) -> None:
    """Refuses a ``system.logging_dir`` or ``system.cache_dir`` that lands outside the allowed roots.

    Raises:
        CryptotuneError: PATH_NOT_ALLOWED naming the key, the resolved path and the roots.
    """
    for key, configured in (("system.logging_dir", logging), ("system.cache_dir", cache)):
        if configured is None:
            continue
        if configured.startswith("~"):
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                f"{key} {_shown(configured)} starts with '~', which the daemon does not expand; "
                "give a path relative to the output directory or an absolute one",
            )
        try:
            path = Path(posixpath.realpath(under_output_dir(output_dir, configured)))
        except (OSError, ValueError) as error:
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID, f"{key} {_shown(configured)} cannot be used as a directory: {error}"
            ) from None
        if not any(path == root or root in path.parents for root in roots):
            allowed = ", ".join(str(root) for root in roots)
            raise CryptotuneError(
                ErrorCode.PATH_NOT_ALLOWED,
                f"{key} {_shown(configured)} is {path}, outside the daemon's allowed roots ({allowed}); "
                "use a path inside the output directory (the default) or under one of those roots",
            )
