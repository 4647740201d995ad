"""Failure descriptions: an exception raised in a stage, as a reason a user understands."""

from __future__ import annotations

import errno

from cryptotune_daemon.errors import CryptotuneError


def describe_failure(error: BaseException, stage: str) -> str:
    """A reason a user understands (never a traceback)."""
    if isinstance(error, CryptotuneError):
        return error.message
    name = type(error).__name__
    if name == "OutOfMemoryError":
        return (
            f"out of GPU memory during {stage}: lower training.per_device_train_batch_size or "
            "max_seq_length, or enable gradient_checkpointing"
        )
    if isinstance(error, MemoryError):
        return f"out of memory during {stage}: lower training.per_device_train_batch_size or max_seq_length"
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" at {error.filename}" if error.filename else ""
        return (
            f"the disk is full{where} during {stage}: free space (old checkpoints live in "
            "OUTPUT_DIR/checkpoints), then continue with --resume PIPELINE_ID"
        )
    if name in ("DistBackendError", "DistNetworkError") or "ProcessGroup" in str(error)[:200]:
        return f"a peer training process failed during {stage} (see the job log for the first error)"
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{stage} failed: {name}: {first_line}" if first_line else f"{stage} failed: {name}"
