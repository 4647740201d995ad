"""Atomic, manifest-verified training checkpoints and the resume checks built on them."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.layout import CHECKPOINT_MANIFEST, CHECKPOINTS_DIR
from cryptotune_daemon.training.hashing import sha256_file

log = logging.getLogger(__name__)

MANIFEST_FILE = CHECKPOINT_MANIFEST
MANIFEST_FORMAT = 1
_STEP_DIR = re.compile(r"step-(\d{6,})")
_TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Hashes:
    """What a checkpoint was trained from: data file, parsed config and tokenizer."""

    data: str
    config: str
    tokenizer: str
    # This run's config under the hash of older checkpoints (never recorded; compared only).
    config_legacy: str = ""


@dataclass(frozen=True)
class CheckpointInfo:
    """A verified checkpoint directory."""

    step: int
    path: Path
    manifest: dict[str, Any]

    @property
    def hashes(self) -> Hashes:
        """The data/config/tokenizer hashes recorded in the manifest."""
        return Hashes(
            data=str(self.manifest.get("data_hash", "")),
            config=str(self.manifest.get("config_hash", "")),
            tokenizer=str(self.manifest.get("tokenizer_hash", "")),
        )


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint at ``step`` (``step-000042``)."""
    return f"step-{step:06d}"


def checkpoints_dir(output_dir: Path) -> Path:
    """The pipeline's checkpoint directory."""
    return output_dir / CHECKPOINTS_DIR


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def write_checkpoint(
    output_dir: Path,
    step: int,
    write_files: Callable[[Path], None],
    hashes: Hashes,
    extra: Mapping[str, Any] | None = None,
    *,
    crash_at_step: int | None = None,
) -> Path:
    """Writes a checkpoint atomically and returns its final directory.

    The files go to a hidden temporary directory inside ``checkpoints/``, every file is fsynced,
    ``manifest.json`` (each file's sha256 and the data/config/tokenizer hashes) is written last,
    and only then is the directory renamed to ``step-NNNNNN``. A crash leaves at most a
    ``.tmp-*`` directory, which is never considered. "Verified" means the manifest is present and
    every file's hash matches (see :func:`verify_checkpoint`).

    Args:
        output_dir: the pipeline's output directory (checkpoints go to ``output_dir/checkpoints``).
        step: the optimiser step the checkpoint captures.
        write_files: writes the checkpoint's files into the directory it is given.
        hashes: data/config/tokenizer hashes recorded in the manifest.
        extra: more manifest fields (e.g. epoch).
        crash_at_step: injected fault (tests only): die midway through writing this step's checkpoint.

    Returns:
        The ``checkpoints/step-NNNNNN`` directory.
    """
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    temp = root / f"{_TEMP_PREFIX}{checkpoint_name(step)}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        write_files(temp)
        if crash_at_step == step:
            _test_crash_hook(output_dir, step, temp)
        files: dict[str, str] = {}
        for path in _files_under(temp):
            _fsync_path(path)
            files[path.relative_to(temp).as_posix()] = sha256_file(path)
        manifest = {
            "format": MANIFEST_FORMAT,
            "step": step,
            "created_at": time.time(),
            "files": files,
            "data_hash": hashes.data,
            "config_hash": hashes.config,
            "tokenizer_hash": hashes.tokenizer,
            **dict(extra or {}),
        }
        manifest_path = temp / MANIFEST_FILE
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        _fsync_path(manifest_path)
        for directory in sorted(
            {p.parent for p in _files_under(temp)}, key=lambda p: len(p.parts), reverse=True
        ):
            _fsync_path(directory, directory=True)
        if final.exists():
            # Same step written again (a resumed run re-saving): swap, never leave the step missing
            # longer than two renames.
            stale = root / f"{_TEMP_PREFIX}old-{checkpoint_name(step)}-{uuid.uuid4().hex[:8]}"
            final.rename(stale)
            temp.rename(final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            temp.rename(final)
        _fsync_path(root, directory=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def _test_crash_hook(output_dir: Path, step: int, partial: Path) -> None:
    """Dies like a power cut after the files, before the manifest (once per output dir).

    The injected fault ``crash_in_checkpoint`` (faults.py); tests only.
    """
    marker = output_dir / f".test-crashed-in-checkpoint-{step}"
    if marker.exists():
        return
    marker.write_text(str(partial), encoding="utf-8")  # tells the test which directory was left
    os.kill(os.getpid(), signal.SIGKILL)


def verify_checkpoint(path: Path) -> tuple[CheckpointInfo | None, str]:
    """Checks one checkpoint directory against its manifest.

    Returns:
        ``(info, "")`` when verified, else ``(None, why)``.
    """
    match = _STEP_DIR.fullmatch(path.name)
    if match is None:
        return None, f"{path.name} is not a checkpoint directory name"
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path.name} has no {MANIFEST_FILE} (incomplete write)"
    except (OSError, ValueError) as error:
        return None, f"{path.name}: unreadable {MANIFEST_FILE} ({error})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        return None, f"{path.name}: {MANIFEST_FILE} lists no files"
    if manifest.get("step") != int(match.group(1)):
        return None, f"{path.name}: manifest step {manifest.get('step')} does not match the directory"
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            return None, f"{path.name}: {name} is missing"
        if sha256_file(file) != expected:
            return None, f"{path.name}: {name} does not match its recorded sha256 (corrupt)"
    return CheckpointInfo(step=int(manifest["step"]), path=path, manifest=manifest), ""


def _step_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def newest_verified(output_dir: Path, warn: Callable[[str], None] | None = None) -> CheckpointInfo | None:
    """The newest checkpoint whose manifest verifies (newer broken ones are skipped and reported)."""
    for _, path in reversed(_step_dirs(output_dir)):
        info, problem = verify_checkpoint(path)
        if info is not None:
            return info
        if warn is not None:
            warn(f"ignoring checkpoint {problem}")
    return None


def find_checkpoint(
    output_dir: Path, step: int | None, warn: Callable[[str], None] | None = None
) -> CheckpointInfo | None:
    """The checkpoint at ``step`` (must verify), or the newest verified one when ``step`` is None.

    Raises:
        CryptotuneError: RESUME_REFUSED when ``step`` is given and that checkpoint is absent or broken.
    """
    if step is None:
        return newest_verified(output_dir, warn)
    path = checkpoints_dir(output_dir) / checkpoint_name(step)
    if not path.is_dir():
        available = [str(s) for s, _ in _step_dirs(output_dir)]
        listing = ", ".join(available) if available else "none"
        raise CryptotuneError(
            ErrorCode.RESUME_REFUSED,
            f"there is no checkpoint at step {step} in {checkpoints_dir(output_dir)} "
            f"(available steps: {listing})",
        )
    info, problem = verify_checkpoint(path)
    if info is None:
        raise CryptotuneError(
            ErrorCode.RESUME_REFUSED,
            f"checkpoint at step {step} does not verify: {problem}; resume from another step or the newest",
        )
    return info


def hash_mismatches(recorded: Hashes, current: Hashes) -> list[str]:
    """Human names of what changed between recorded and current hashes (empty hashes are unknown)."""
    changed = []
    for name, label in (("data", "the data file"), ("config", "the config"), ("tokenizer", "the tokenizer")):
        old, new = getattr(recorded, name), getattr(current, name)
        if name == "config" and old and old == current.config_legacy:
            continue  # recorded before resumes could change the parallel section
        if old and new and old != new:
            changed.append(label)
    return changed


def refuse_if_changed(
    recorded: Hashes, current: Hashes, where: str, details: list[str] | None = None
) -> None:
    """Raises RESUME_REFUSED naming what changed, if anything did.

    Args:
        recorded: hashes the earlier run recorded.
        current: hashes of what this run would use.
        where: what recorded them (e.g. "checkpoint step-000010"), for the message.
        details: optional extra lines (e.g. which config fields changed).
    """
    changed = hash_mismatches(recorded, current)
    if not changed:
        return
    what = " and ".join(changed)
    extra = f" ({'; '.join(details)})" if details else ""
    raise CryptotuneError(
        ErrorCode.RESUME_REFUSED,
        f"cannot resume: {what} changed since {where}{extra}. Resume with the same data and config, "
        "or start a new pipeline",
    )


def remove_temp_dirs(output_dir: Path) -> int:
    """Deletes leftovers of interrupted checkpoint writes; returns how many were removed."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return 0
    removed = 0
    for child in root.iterdir():
        if child.name.startswith(_TEMP_PREFIX):
            with contextlib.suppress(OSError):
                shutil.rmtree(child)
                removed += 1
    return removed


def remove_checkpoints(output_dir: Path) -> int:
    """Deletes every step checkpoint (a fresh, non-resumed training run starts clean)."""
    count = 0
    for _, path in _step_dirs(output_dir):
        shutil.rmtree(path, ignore_errors=True)
        count += 1
    return count
