"""Checks on request fields shared by the servicers; each refusal says what is wrong and how to fix it."""

from __future__ import annotations

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

MAX_CONFIG_BYTES = 1024 * 1024
# Linux PATH_MAX and NAME_MAX: no job reference, directory or model name is longer.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
JOB_REF_HINT = "give a job id, a pipeline id or the job's absolute output directory"
MODEL_HINT = "give builtin:tiny-qwen3, a Hugging Face id (owner/name) or a local model directory"


def shown(value: str, limit: int = 80) -> str:
    """A field's value for an error message: quoted, control characters escaped, long values cut."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"


def config_size(text: str) -> str:
    """Returns ``text`` when it is within the config size cap, else raises RESOURCE_EXHAUSTED."""
    size = len(text.encode())
    if size > MAX_CONFIG_BYTES:
        raise CryptotuneError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"the config is {size // 1024} KiB, over the {MAX_CONFIG_BYTES // 1024} KiB limit; a "
            "cryptotune config is a few KiB of YAML: start from `cryptotune init-config`",
        )
    return text


def job_ref(ref: str) -> str:
    """Returns a job reference that is non-empty and could name a directory, else raises REQUEST_INVALID."""
    if not ref:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"job is required: {JOB_REF_HINT}")
    return path_text(ref, "job", JOB_REF_HINT)


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


def int_range(value: int, name: str, low: int, high: int, meaning: str = "") -> int:
    """Returns ``value`` when ``low <= value <= high``, else raises REQUEST_INVALID naming the range."""
    if not low <= value <= high:
        extra = f" ({meaning})" if meaning else ""
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"{name} must be between {low} and {high}{extra}, got {value}"
        )
    return value
