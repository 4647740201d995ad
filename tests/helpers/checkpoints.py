"""Test helpers for checkpoints (shared by several test modules)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptotune_daemon.training.checkpoints import CheckpointInfo, checkpoints_dir, verify_checkpoint


def list_checkpoints(output_dir: Path, warn: Callable[[str], None] | None = None) -> list[CheckpointInfo]:
    """Verified checkpoints, oldest first; unverifiable ones are reported through ``warn``."""
    verified = []
    for path in sorted(checkpoints_dir(output_dir).glob("step-*")):  # step-NNNNNN: sorted by step
        info, problem = verify_checkpoint(path)
        if info is not None:
            verified.append(info)
        elif warn is not None:
            warn(f"ignoring checkpoint {problem}")
    return verified
