"""Checks on request fields shared by the servicers; each refusal says what is wrong and how to fix it."""

from __future__ import annotations

from cryptotune_daemon.constants import BUILTIN_TINY_QWEN3
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.path_text import MAX_NAME_BYTES, MAX_PATH_BYTES, path_text, shown

MAX_CONFIG_BYTES = 1024 * 1024
JOB_REF_HINT = "give a job id, a pipeline id or the job's absolute output directory"
MODEL_HINT = f"give {BUILTIN_TINY_QWEN3}, a Hugging Face id (owner/name) or a local model directory"


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


def int_range(value: int, name: str, low: int, high: int, meaning: str = "") -> int:
    """Returns ``value`` when ``low <= value <= high``, else raises REQUEST_INVALID naming the range."""
    if not low <= value <= high:
        extra = f" ({meaning})" if meaning else ""
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"{name} must be between {low} and {high}{extra}, got {value}"
        )
    return value


__all__ = [
    "JOB_REF_HINT",
    "MAX_CONFIG_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MODEL_HINT",
    "config_size",
    "int_range",
    "job_ref",
    "path_text",
    "shown",
]
