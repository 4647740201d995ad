"""Content hashes that tie checkpoints and caches to their data, config and tokenizer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values always hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def data_hash(path: Path) -> str:
    """The data hash: sha256 of the uploaded file (the daemon's blob digest is the same value)."""
    return sha256_file(path)


def config_fingerprint(config: Any) -> dict[str, Any]:
    """The config as a plain JSON-able dict (pydantic ``model_dump``), the input of :func:`config_hash`."""
    if hasattr(config, "model_dump"):
        dumped = config.model_dump(mode="json")
    elif isinstance(config, Mapping):
        dumped = dict(config)
    else:
        raise TypeError(f"cannot fingerprint a {type(config).__name__}")
    # Round-trip through canonical JSON so tuples, enums and paths compare as they hash.
    result: dict[str, Any] = json.loads(canonical_json(dumped))
    return result


# What a resume may change: the parallel layout (strategy, world size, ...) and the split of the
# effective batch into micro-batch × accumulation (the trainer checks the effective batch itself), and
# where metrics are reported (training.report_to), which changes nothing that is trained.
RESUME_FREE_KEYS: tuple[tuple[str, ...], ...] = (
    ("parallel",),
    ("training", "per_device_train_batch_size"),
    ("training", "gradient_accumulation_steps"),
    ("training", "report_to"),
)
# The parallel keys of cryptotune before strategies could change on resume (see legacy_config_hash).
_LEGACY_PARALLEL_KEYS = ("strategy", "world_size", "enable_distributed")


def _without(fingerprint: dict[str, Any], path: tuple[str, ...]) -> None:
    section = fingerprint
    for key in path[:-1]:
        inner = section.get(key)
        if not isinstance(inner, dict):
            return
        section = inner
    section.pop(path[-1], None)


def config_hash(config: Any) -> str:
    """Hash of the parsed config that a resume must match (not the YAML text: comments and formatting
    do not count; nor do the keys of :data:`RESUME_FREE_KEYS`)."""
    fingerprint = config_fingerprint(config)
    for path in RESUME_FREE_KEYS:
        _without(fingerprint, path)
    return sha256_text(canonical_json(fingerprint))


def legacy_config_hash(config: Any) -> str:
    """The config hash as checkpoints written before :data:`RESUME_FREE_KEYS` recorded it (the whole
    config, with the parallel keys of that time), so that they still resume."""
    fingerprint = config_fingerprint(config)
    parallel = fingerprint.get("parallel")
    if isinstance(parallel, dict):
        fingerprint["parallel"] = {k: v for k, v in parallel.items() if k in _LEGACY_PARALLEL_KEYS}
    return sha256_text(canonical_json(fingerprint))


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config fingerprints.

    Args:
        old: the recorded fingerprint.
        new: the current fingerprint.
        prefix: used in recursion.

    Returns:
        Sorted ``section.field: old -> new`` descriptions.
    """
    changes: list[str] = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            changes.extend(config_differences(before, after, f"{name}."))
        elif before != after:
            changes.append(f"{name}: {before!r} -> {after!r}")
    return changes


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash of a tokenizer's behaviour: its serialised fast tokenizer, special tokens and template.

    Two tokenizers that split text the same way and share special tokens hash equally, wherever
    they were loaded from.
    """
    parts: dict[str, Any] = {}
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        parts["backend"] = sha256_text(str(backend.to_str()))
    else:
        parts["vocab"] = sha256_text(canonical_json(sorted(tokenizer.get_vocab().items())))
    parts["special"] = {
        "eos": getattr(tokenizer, "eos_token", None),
        "pad": getattr(tokenizer, "pad_token", None),
        "bos": getattr(tokenizer, "bos_token", None),
    }
    parts["added"] = sorted((str(k), int(v)) for k, v in (tokenizer.get_added_vocab() or {}).items())
    parts["chat_template"] = getattr(tokenizer, "chat_template", None)
    return sha256_text(canonical_json(parts))


def _file_identity(path: Path) -> list[int] | None:
    """What changes when a file is rewritten or replaced (inode, size, mtime); None when it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def remembered_tokenizer_hash(tokenizer: Any, source: Path, memo: Path) -> str:
    """:func:`tokenizer_hash`, remembered in ``memo`` for as long as ``source`` is unchanged.

    Serialising and hashing the Qwen3 tokenizer (151,669 entries) costs seconds; its cached
    ``tokenizer.json`` changes only when the daemon rebuilds it, so each job need not redo it.

    Args:
        tokenizer: the tokenizer loaded from ``source``.
        source: the file the tokenizer was loaded from (its identity keys the memo).
        memo: where the hash is kept (written atomically; a stale or unreadable memo is recomputed).
    """
    identity = _file_identity(source)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        recorded = json.loads(memo.read_text(encoding="utf-8"))
        if identity is not None and recorded["source"] == identity:
            return str(recorded["hash"])
    value = tokenizer_hash(tokenizer)
    if identity is not None:
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            fd, scratch = tempfile.mkstemp(prefix=f".{memo.name}-", dir=memo.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"source": identity, "hash": value}, handle)
            os.replace(scratch, memo)
    return value
