"""Whether a request's text can name a file: no NUL byte, within Linux's PATH_MAX and NAME_MAX.

Checked before the value reaches the OS, which would raise ValueError or ENAMETOOLONG. Used by the
servicers' field checks (``services/validation.py``) and the submission's ``output_dir`` check.
"""

from __future__ import annotations

from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

# Linux PATH_MAX and NAME_MAX: no job reference, directory or model name is longer.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def shown(value: str, limit: int = 80) -> str:
    """A field's value for an error message: quoted, control characters escaped, long values cut."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"


def path_text(value: str, field: str, hint: str) -> str:
    """Returns ``value`` when it could name a file (no NUL, within PATH_MAX and NAME_MAX), else raises.

    Checked before the value reaches the OS, which would raise ValueError or ENAMETOOLONG.
    """
    if "\x00" in value:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"{field} {shown(value)} contains a NUL byte; {hint}"
        )
    if len(value.encode()) > MAX_PATH_BYTES:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"{field} {shown(value)} is longer than {MAX_PATH_BYTES} bytes; {hint}"
        )
    long_part = next((part for part in value.split("/") if len(part.encode()) > MAX_NAME_BYTES), None)
    if long_part is not None:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"{field} {shown(value)} has a name longer than {MAX_NAME_BYTES} bytes "
            f"({shown(long_part, 40)}); {hint}",
        )
    return value


def expand_home(value: str) -> Path:
    """``value`` as a path with a leading ``~`` or ``~user`` expanded.

    ``Path.expanduser`` raises RuntimeError for ``~user`` when this machine has no such user (e.g. a
    model name ``~0``); the path is then left as written: it names nothing here, and the caller's
    "not found" message says so.
    """
    path = Path(value)
    try:
        return path.expanduser()
    except RuntimeError:
        return path
