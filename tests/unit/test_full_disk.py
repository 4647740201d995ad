"""A full disk while writing a checkpoint: nothing half-written is kept, and the reason is clear."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cryptotune_daemon.training.checkpoints import Hashes, newest_verified, write_checkpoint
from cryptotune_daemon.worker.failures import describe_failure
from tests.helpers.checkpoints import list_checkpoints

HASHES = Hashes(data="d" * 64, config="c" * 64, tokenizer="t" * 64)


def test_enospc_during_checkpoint_leaves_no_checkpoint_and_keeps_the_previous(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 2, lambda d: (d / "adapter.bin").write_bytes(b"ok"), HASHES)

    def fill_disk(directory: Path) -> None:
        (directory / "adapter.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "optimizer.pt"))

    with pytest.raises(OSError) as info:
        write_checkpoint(tmp_path, 4, fill_disk, HASHES)
    assert [c.step for c in list_checkpoints(tmp_path)] == [2]
    newest = newest_verified(tmp_path)
    assert newest is not None and newest.step == 2
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    reason = describe_failure(info.value, "training")
    assert reason.startswith("the disk is full at ")
    assert "optimizer.pt" in reason and "--resume" in reason
