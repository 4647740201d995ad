"""Training data preparation: validated records → deduplicated, split, tokenised examples (cached).

Batching and packing of the examples live in :mod:`cryptotune_daemon.training.batching`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cryptotune_daemon.constants import IGNORE_INDEX
from cryptotune_daemon.data.records import Record, RecordProblem
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.hashing import canonical_json, sha256_text

# Bump when rendering or tokenisation changes, so stale caches are not reused.
CACHE_FORMAT = 1
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class Example:
    """One tokenised record.

    Attributes:
        index: the record's 0-based index in the data file.
        line: the record's 1-based line in the data file.
        input_ids: token ids of prompt + trained part.
        labels: ``input_ids`` with the prompt (and nothing else) set to -100.
        prompt_tokens: length of the masked prompt (generation starts after it).
        difficulty: 1–4, or None.
        crypto_terms: terms the answer should mention.
    """

    index: int
    line: int
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_tokens: int
    difficulty: int | None = None
    crypto_terms: tuple[str, ...] = ()

    @property
    def length(self) -> int:
        """Total tokens."""
        return len(self.input_ids)

    @property
    def label_tokens(self) -> int:
        """Tokens that carry loss (after the next-token shift)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class PreparedData:
    """The output of ``data_prep``.

    Attributes:
        train: training examples in split order.
        eval: evaluation examples.
        stats: counts for events and the report.
        split: the record indices of each split (persisted so a resume uses the same split).
    """

    train: list[Example]
    eval: list[Example]
    stats: dict[str, int] = field(default_factory=dict)
    split: dict[str, list[int]] = field(default_factory=dict)


def _format_problems(problems: Sequence[RecordProblem], display_name: str) -> str:
    lines = []
    for problem in problems[:MAX_LISTED_PROBLEMS]:
        where = f"line {problem.line}" if problem.line else "file"
        field_name = f" field '{problem.field}'" if problem.field else ""
        lines.append(f"  {display_name} {where}{field_name}: {problem.message}")
    more = len(problems) - MAX_LISTED_PROBLEMS
    if more > 0:
        lines.append(f"  ... and {more} more problem(s)")
    return "\n".join(lines)


def read_records(path: Path, *, display_name: str, data_format: str = "auto") -> list[Record]:
    """Reads and validates every record; nothing is dropped silently.

    Raises:
        CryptotuneError: DATA_INVALID listing the first problems (with line numbers) when any
            record is invalid, or when the file holds no records.
    """
    from cryptotune_daemon.data.readers import iter_records

    records: list[Record] = []
    problems: list[RecordProblem] = []
    for item in iter_records(path, display_name=display_name, data_format=data_format):
        if isinstance(item, RecordProblem):
            problems.append(item)
        else:
            records.append(item)
    if problems:
        invalid = len({problem.index for problem in problems})  # a record may have several problems
        counted = f"{invalid} invalid record(s)"
        if len(problems) != invalid:
            counted += f" ({len(problems)} problems)"
        raise CryptotuneError(
            ErrorCode.DATA_INVALID,
            f"{counted} in {display_name}; fix them and resubmit:\n"
            + _format_problems(problems, display_name),
        )
    if not records:
        raise CryptotuneError(ErrorCode.DATA_INVALID, f"{display_name} holds no records")
    return records


def dedupe(records: Iterable[Record]) -> tuple[list[Record], int]:
    """Drops exact (instruction, input, output) duplicates, keeping the first; returns the count dropped."""
    seen: set[tuple[str, str, str]] = set()
    unique: list[Record] = []
    dropped = 0
    for record in records:
        key = (record.instruction, record.input, record.output)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        unique.append(record)
    return unique, dropped


def tokenized_cache_key(data_hash: str, tokenizer_hash: str, max_seq_length: int, data_format: str) -> str:
    """The tokenised-data cache key: data, tokenizer, max length, reader format and cache format."""
    return sha256_text(
        canonical_json(
            {
                "data": data_hash,
                "tokenizer": tokenizer_hash,
                "max_seq_length": max_seq_length,
                "data_format": data_format,
                "format": CACHE_FORMAT,
            }
        )
    )


def _tokenize(records: Sequence[Record], tokenizer: Any) -> list[Example]:
    from cryptotune_daemon.data.template import render_record
    from cryptotune_daemon.data.tokenizer import tokenize_samples

    samples = tokenize_samples(tokenizer, [(render_record(record), record) for record in records])
    return [
        Example(
            index=record.index,
            line=record.line,
            input_ids=tuple(int(t) for t in sample.input_ids),
            labels=tuple(int(t) for t in sample.labels),
            prompt_tokens=int(sample.prompt_tokens),
            difficulty=record.difficulty,
            crypto_terms=tuple(record.crypto_terms),
        )
        for record, sample in zip(records, samples, strict=True)
    ]


def _save_examples(path: Path, examples: Sequence[Example]) -> None:
    lengths = [e.length for e in examples]
    payload = {
        "format": CACHE_FORMAT,
        "input_ids": torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.int64),
        "labels": torch.tensor([t for e in examples for t in e.labels], dtype=torch.int64),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "meta": [
            {
                "index": e.index,
                "line": e.line,
                "prompt_tokens": e.prompt_tokens,
                "difficulty": -1 if e.difficulty is None else e.difficulty,
                "crypto_terms": list(e.crypto_terms),
            }
            for e in examples
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp name unique per process: ranks may fill the same cache concurrently.
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    torch.save(payload, temp)
    temp.replace(path)


def _load_examples(path: Path) -> list[Example] | None:
    try:
        payload = torch.load(path, weights_only=True)
    except Exception:  # missing, truncated or from another version: rebuild
        return None
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        return None
    ids: list[int] = payload["input_ids"].tolist()
    labels: list[int] = payload["labels"].tolist()
    examples, offset = [], 0
    for length, meta in zip(payload["lengths"].tolist(), payload["meta"], strict=True):
        difficulty = int(meta["difficulty"])
        examples.append(
            Example(
                index=int(meta["index"]),
                line=int(meta["line"]),
                input_ids=tuple(ids[offset : offset + length]),
                labels=tuple(labels[offset : offset + length]),
                prompt_tokens=int(meta["prompt_tokens"]),
                difficulty=None if difficulty < 0 else difficulty,
                crypto_terms=tuple(str(t) for t in meta["crypto_terms"]),
            )
        )
        offset += length
    return examples


def tokenize_cached(
    records: Sequence[Record], tokenizer: Any, cache_path: Path
) -> tuple[list[Example], bool]:
    """Tokenises ``records`` once; later calls with the same cache path load the result.

    Returns:
        The examples in record order, and whether they came from the cache.
    """
    cached = _load_examples(cache_path)
    if cached is not None and [e.index for e in cached] == [r.index for r in records]:
        return cached, True
    examples = _tokenize(records, tokenizer)
    _save_examples(cache_path, examples)
    return examples, False


def check_lengths(examples: Sequence[Example], max_seq_length: int, display_name: str) -> None:
    """Refuses samples longer than ``max_seq_length``: they are never cut silently.

    Raises:
        CryptotuneError: DATA_INVALID listing each offending record's index, line and token count.
    """
    too_long = [e for e in examples if e.length > max_seq_length]
    if not too_long:
        return
    listed = "\n".join(
        f"  record {e.index} (line {e.line}): {e.length} tokens" for e in too_long[:MAX_LISTED_PROBLEMS]
    )
    more = len(too_long) - MAX_LISTED_PROBLEMS
    if more > 0:
        listed += f"\n  ... and {more} more"
    longest = max(e.length for e in too_long)
    raise CryptotuneError(
        ErrorCode.DATA_INVALID,
        f"{len(too_long)} sample(s) in {display_name} exceed training.max_seq_length={max_seq_length} tokens "
        f"(longest: {longest}); samples are never truncated silently. Raise max_seq_length to at least "
        f"{longest}, or shorten or remove these records:\n{listed}",
    )


def split_counts(total: int, train_ratio: float, eval_ratio: float) -> tuple[int, int]:
    """How many samples go to train and eval.

    Eval gets ``round(total × eval_ratio)`` (at least one when the ratio is positive and there are
    two or more samples); train gets ``round(total × train_ratio)`` capped by what remains, or all
    of the remainder when the two ratios add up to (about) one.
    """
    n_eval = round(total * eval_ratio) if eval_ratio > 0 else 0
    if eval_ratio > 0 and n_eval == 0 and total >= 2:
        n_eval = 1
    n_eval = min(n_eval, max(total - 1, 0))
    remaining = total - n_eval
    n_train = remaining if train_ratio + eval_ratio >= 0.999 else min(remaining, round(total * train_ratio))
    return n_train, n_eval


def seeded_permutation(count: int, seed: int) -> list[int]:
    """A permutation of ``range(count)`` that depends only on ``seed`` (torch's CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    result: list[int] = torch.randperm(count, generator=generator).tolist()
    return result


def split_examples(
    examples: Sequence[Example], *, seed: int, shuffle: bool, train_ratio: float, eval_ratio: float
) -> tuple[list[Example], list[Example]]:
    """Seeded shuffle, then the first part is eval and the rest train (see :func:`split_counts`)."""
    order = seeded_permutation(len(examples), seed) if shuffle else list(range(len(examples)))
    n_train, n_eval = split_counts(len(examples), train_ratio, eval_ratio)
    shuffled = [examples[i] for i in order]
    return shuffled[n_eval : n_eval + n_train], shuffled[:n_eval]


def prepare_data(
    *,
    data_path: Path,
    display_name: str,
    data_format: str,
    tokenizer: Any,
    cache_dir: Path,
    data_hash: str,
    tokenizer_hash: str,
    max_seq_length: int,
    max_samples: int | None,
    seed: int,
    shuffle: bool,
    train_ratio: float,
    eval_ratio: float,
    warn: Callable[[str], None] = lambda _: None,
) -> PreparedData:
    """Runs the whole ``data_prep`` stage: read, validate, dedupe, limit, tokenise (cached), check, split.

    Raises:
        CryptotuneError: DATA_INVALID for invalid records, over-long samples or an empty train split.
    """
    records = read_records(data_path, display_name=display_name, data_format=data_format)
    unique, duplicates = dedupe(records)
    if duplicates:
        warn(f"dropped {duplicates} exact duplicate record(s) (same instruction, input and output)")
    if max_samples is not None and 0 < max_samples < len(unique):
        unique = unique[:max_samples]
    cache_path = (
        cache_dir
        / "tokenized"
        / f"{tokenized_cache_key(data_hash, tokenizer_hash, max_seq_length, data_format)}.pt"
    )
    examples, _ = tokenize_cached(unique, tokenizer, cache_path)
    check_lengths(examples, max_seq_length, display_name)
    train, evaluation = split_examples(
        examples, seed=seed, shuffle=shuffle, train_ratio=train_ratio, eval_ratio=eval_ratio
    )
    if not train:
        raise CryptotuneError(
            ErrorCode.DATA_INVALID,
            f"{display_name} leaves no training samples ({len(examples)} usable record(s), "
            f"train_split_ratio={train_ratio}, eval_split_ratio={eval_ratio}); "
            "add records or adjust the ratios",
        )
    stats = {
        "records": len(records),
        "duplicates": duplicates,
        "used": len(examples),
        "train_samples": len(train),
        "eval_samples": len(evaluation),
        "train_tokens": sum(e.length for e in train),
        "eval_tokens": sum(e.length for e in evaluation),
        "train_label_tokens": sum(e.label_tokens for e in train),
    }
    split = {"train": [e.index for e in train], "eval": [e.index for e in evaluation]}
    return PreparedData(train=train, eval=evaluation, stats=stats, split=split)


def restore_data(
    *,
    data_path: Path,
    display_name: str,
    data_format: str,
    tokenizer: Any,
    cache_dir: Path,
    data_hash: str,
    tokenizer_hash: str,
    max_seq_length: int,
    split: dict[str, list[int]],
    stats: dict[str, int],
) -> PreparedData:
    """Rebuilds a completed ``data_prep``'s result from the tokenised cache and the recorded split."""
    key = tokenized_cache_key(data_hash, tokenizer_hash, max_seq_length, data_format)
    cache_path = cache_dir / "tokenized" / f"{key}.pt"
    by_index = {e.index: e for e in (_load_examples(cache_path) or [])}
    wanted = [*split.get("train", []), *split.get("eval", [])]
    if any(i not in by_index for i in wanted):
        # The cache was cleaned: tokenising again is deterministic and gives the same examples.
        records = read_records(data_path, display_name=display_name, data_format=data_format)
        unique, _ = dedupe(records)
        keep = set(wanted)
        examples, _ = tokenize_cached([r for r in unique if r.index in keep], tokenizer, cache_path)
        by_index = {e.index: e for e in examples}
    missing = [i for i in wanted if i not in by_index]
    if missing:
        raise CryptotuneError(
            ErrorCode.RESUME_REFUSED,
            f"the recorded data split names records missing from {display_name} (e.g. index {missing[0]}); "
            "start a new pipeline",
        )
    return PreparedData(
        train=[by_index[i] for i in split.get("train", [])],
        eval=[by_index[i] for i in split.get("eval", [])],
        stats=dict(stats),
        split={k: list(v) for k, v in split.items()},
    )


# -- batching --------------------------------------------------------------------------------------
