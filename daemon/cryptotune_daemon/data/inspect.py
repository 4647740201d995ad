"""Inspects a data file: validity, formats, difficulty, thinking, duplicates and token lengths."""

from __future__ import annotations

import hashlib
import math
from array import array
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptotune_daemon.data.readers import (
    convert_record,
    detect_file_format,
    detect_source_format,
    iter_raw_records,
)
from cryptotune_daemon.data.records import Record, RecordProblem
from cryptotune_daemon.data.template import render_record
from cryptotune_daemon.data.token_counts import TokenCounter
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKENIZE_BATCH: Final = 1024  # records per batched encode: enough for the tokenizer's threads
TOP_TERMS: Final = 20
MAX_OVER_LENGTH_INDICES: Final = 100
MAX_ERRORS: Final = 1000
LENGTH_PARTS: Final = ("prompt", "reasoning", "answer", "total")
DIFFICULTY_KEYS: Final = ("1", "2", "3", "4", "unknown")


@dataclass
class InspectionReport:
    """What :func:`inspect_data` found. Plain data: :meth:`to_dict` is JSON-serialisable.

    Attributes:
        format: the file format read, ``json`` or ``jsonl``.
        source_format: the record shape: ``native``, ``alpaca``, ``sharegpt``, ``openai``,
            ``mixed`` (several shapes) or ``unknown`` (no record had a recognisable shape).
        records_total: record slots in the file (valid + invalid).
        records_valid: records that can be trained.
        records_invalid: records with a problem (each has one or more entries in ``errors``,
            one per bad field, up to a cap).
        errors: per-record problems, in file order; the problems of one record share its index.
        warnings: things worth fixing that do not block training; index -1 for whole-file ones.
        difficulty_counts: valid records per difficulty, keys ``"1"``–``"4"`` and ``"unknown"``.
        with_thinking: valid records that carry a reasoning trace.
        crypto_terms_top: the most frequent crypto terms as (term, records) pairs.
        duplicates: valid records whose whitespace-normalised (instruction, input) repeats an
            earlier record's.
        token_lengths: min/p50/p90/p99/max of total tokens per valid record.
        token_lengths_by_part: the same for ``prompt``, ``reasoning``, ``answer`` and ``total``.
        over_max_seq_length: valid records longer than ``max_seq_length`` tokens.
        over_max_seq_length_indices: their record indices (the first 100).
        max_seq_length: the limit checked against.
        tokenizer: the tokenizer's name.
        samples: the first valid records with their rendering and token count.
    """

    format: str
    source_format: str
    records_total: int
    records_valid: int
    records_invalid: int
    errors: list[RecordProblem]
    warnings: list[RecordProblem]
    difficulty_counts: dict[str, int]
    with_thinking: int
    crypto_terms_top: list[tuple[str, int]]
    duplicates: int
    token_lengths: dict[str, int]
    token_lengths_by_part: dict[str, dict[str, int]]
    over_max_seq_length: int
    over_max_seq_length_indices: list[int]
    max_seq_length: int
    tokenizer: str
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready dicts and lists."""
        result = asdict(self)
        result["crypto_terms_top"] = [[term, count] for term, count in self.crypto_terms_top]
        return result


def length_stats(lengths: array[int] | list[int]) -> dict[str, int]:
    """min, p50, p90, p99 and max (nearest-rank percentiles); all 0 when empty."""
    if not lengths:
        return {"min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(lengths)

    def rank(percent: int) -> int:
        return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]

    return {"min": ordered[0], "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


def _dedupe_key(record: Record) -> bytes:
    # A 16-byte digest per record keeps duplicate detection cheap for 100k-record files.
    normalised = " ".join(record.instruction.split()) + "\x00"
    if record.input:
        normalised += " ".join(record.input.split())
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def _whole_file(field_name: str, message: str) -> RecordProblem:
    return RecordProblem(line=0, index=-1, field=field_name, message=message)


class _Collector:
    """Counters for one pass over a file; holds ints and at most two batches of records.

    Records are counted in batches of :data:`TOKENIZE_BATCH`: while the tokenizer's threads encode
    one batch (in ``encoder``, a thread of its own: the tokenizer releases the GIL), this thread
    reads, checks and prepares the next.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sample: int,
        max_seq_length: int,
        max_errors: int,
        encoder: ThreadPoolExecutor,
    ) -> None:
        self.counter = TokenCounter(tokenizer)
        self.encoder = encoder
        self.sample = sample
        self.max_seq_length = max_seq_length
        self.max_errors = max_errors
        self.total = 0
        self.valid = 0
        self.invalid = 0
        self.problems = 0
        self.errors: list[RecordProblem] = []
        self.shapes: Counter[str] = Counter()
        self.difficulty: Counter[str] = Counter({key: 0 for key in DIFFICULTY_KEYS})
        self.with_thinking = 0
        self.terms: Counter[str] = Counter()
        self.unknown_keys: Counter[str] = Counter()
        self.seen: set[bytes] = set()
        self.duplicates = 0
        self.duplicate_indices: list[int] = []
        self.lengths: dict[str, array[int]] = {part: array("l") for part in LENGTH_PARTS}
        self.over = 0
        self.over_indices: list[int] = []
        self.samples: list[dict[str, Any]] = []
        self.sampled_values: list[Any] = []  # the original JSON of the first ``sample`` valid records
        self.batch: list[Record] = []
        self.encoding: tuple[list[Record], list[str], Future[list[int]]] | None = None

    def add_problems(self, problems: list[RecordProblem]) -> None:
        """Counts one invalid record and lists its problems while under the cap."""
        self.invalid += 1
        self.problems += len(problems)
        self.errors.extend(problems[: max(0, self.max_errors - len(self.errors))])

    def add_record(self, record: Record, raw_value: Any) -> None:
        self.valid += 1
        self.difficulty[str(record.difficulty) if record.difficulty else "unknown"] += 1
        self.with_thinking += record.has_thinking
        terms = self.terms
        for term in record.crypto_terms:
            terms[term] += 1
        if record.extra:
            self.unknown_keys.update(record.extra.keys())
        key = _dedupe_key(record)
        if key in self.seen:
            self.duplicates += 1
            if len(self.duplicate_indices) < 10:
                self.duplicate_indices.append(record.index)
        else:
            self.seen.add(key)
        # Only sampled records keep their original JSON object; the rest drop it right away.
        if len(self.sampled_values) < self.sample:
            self.sampled_values.append(raw_value)
        self.batch.append(record)
        if len(self.batch) >= TOKENIZE_BATCH:
            self.flush()

    def flush(self) -> None:
        """Starts encoding the batch, then counts the one encoded before it (if any)."""
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        texts = self.counter.texts(batch)
        started = (batch, texts, self.encoder.submit(self.counter.encode, texts))
        if self.encoding is not None:
            self._count(*self.encoding)
        self.encoding = started

    def finish(self) -> None:
        """Encodes and counts every record added so far."""
        self.flush()
        if self.encoding is not None:
            encoding, self.encoding = self.encoding, None
            self._count(*encoding)

    def _count(self, batch: list[Record], texts: list[str], encoded: Future[list[int]]) -> None:
        prompts, reasonings, answers, totals = self.counter.part_lengths(batch, texts, encoded.result())
        self.lengths["prompt"].extend(prompts)
        self.lengths["reasoning"].extend(reasonings)
        self.lengths["answer"].extend(answers)
        self.lengths["total"].extend(totals)
        limit = self.max_seq_length
        if max(totals) > limit:
            for record, total in zip(batch, totals, strict=True):
                if total > limit:
                    self.over += 1
                    if len(self.over_indices) < MAX_OVER_LENGTH_INDICES:
                        self.over_indices.append(record.index)
        for record, total in zip(batch, totals, strict=False):
            if len(self.samples) >= len(self.sampled_values):
                break
            rendered = render_record(record)
            self.samples.append(
                {
                    "index": record.index,
                    "line": record.line,
                    "record": self.sampled_values[len(self.samples)],
                    "rendered_text": rendered.text,
                    "trained_text": rendered.trained,
                    "tokens": total,
                }
            )

    def source_format(self) -> str:
        families = {"native" if shape == "alpaca" else shape for shape in self.shapes}
        if not families:
            return "unknown"
        if len(families) > 1:
            return "mixed"
        family = families.pop()
        if family == "native":
            return "native" if self.shapes["native"] else "alpaca"
        return family

    def warnings(self) -> list[RecordProblem]:
        found: list[RecordProblem] = []
        if self.problems > len(self.errors):
            if self.problems == self.invalid:
                message = f"{self.invalid} records are invalid; only the first {len(self.errors)} are listed"
            else:
                message = (
                    f"{self.invalid} records are invalid with {self.problems} problems in all; "
                    f"only the first {len(self.errors)} problems are listed"
                )
            found.append(_whole_file("", message))
        if self.valid:
            found.extend(self._difficulty_warnings())
            without = self.valid - self.with_thinking
            if without:
                share = 100.0 * without / self.valid
                found.append(
                    _whole_file(
                        "thinking",
                        f"{without} of {self.valid} valid records ({share:.1f}%) have no thinking: "
                        "they train an empty <think></think> block, teaching the model to skip "
                        "reasoning; add a 'thinking' trace to them",
                    )
                )
        if self.duplicates:
            shown = ", ".join(str(index) for index in self.duplicate_indices)
            found.append(
                _whole_file(
                    "instruction",
                    f"{self.duplicates} records repeat the instruction and input of an earlier record "
                    f"(e.g. indices {shown}); training deduplicates exact copies, review near-copies",
                )
            )
        if self.over:
            shown = ", ".join(str(index) for index in self.over_indices[:10])
            found.append(
                _whole_file(
                    "",
                    f"{self.over} records are longer than max_seq_length={self.max_seq_length} tokens "
                    f"(e.g. indices {shown}): they will be refused at training; shorten them or raise "
                    "max_seq_length",
                )
            )
        for key, count in sorted(self.unknown_keys.items()):
            found.append(
                _whole_file(
                    key,
                    f"key '{key}' is not used by the trainer and is ignored ({count} records)",
                )
            )
        return found

    def _difficulty_warnings(self) -> list[RecordProblem]:
        levels = {key: self.difficulty[key] for key in ("1", "2", "3", "4")}
        if not any(levels.values()):
            return [
                _whole_file(
                    "difficulty",
                    "no record has a 'difficulty' (1–4): evaluation loss cannot be reported per difficulty",
                )
            ]
        found: list[RecordProblem] = []
        missing = [key for key, count in levels.items() if not count]
        if missing:
            found.append(
                _whole_file(
                    "difficulty",
                    f"no record has difficulty {', '.join(missing)}: "
                    "the model sees no examples of that level",
                )
            )
        present = [count for count in levels.values() if count]
        if max(present) > 2 * min(present):
            shown = ", ".join(f"{key}: {count}" for key, count in levels.items())
            found.append(
                _whole_file(
                    "difficulty",
                    f"difficulty levels are imbalanced ({shown}): the largest level has more than twice "
                    "the records of the smallest",
                )
            )
        if self.difficulty["unknown"]:
            found.append(
                _whole_file(
                    "difficulty",
                    f"{self.difficulty['unknown']} valid records have no difficulty; "
                    "they are counted as 'unknown'",
                )
            )
        return found


def inspect_data(
    path: Path,
    *,
    display_name: str,
    tokenizer: PreTrainedTokenizerBase,
    file_format: str | None = None,
    data_format: str = "auto",
    sample: int = 0,
    max_seq_length: int = 2048,
    tokenizer_name: str = "qwen3",
    max_errors: int = MAX_ERRORS,
) -> InspectionReport:
    """Reads a data file once, in bounded memory, and reports what training would make of it.

    Args:
        path: the data file.
        display_name: the name used in messages (never a storage path).
        tokenizer: the tokenizer training would use (see
            :func:`~cryptotune_daemon.data.tokenizer.load_tokenizer`).
        file_format: ``"json"`` or ``"jsonl"`` to force a format; None (or "") to auto-detect.
        data_format: ``"auto"`` or a record shape to require (see
            :func:`~cryptotune_daemon.data.readers.iter_records`).
        sample: how many of the first valid records to include rendered in the report.
        max_seq_length: the training sequence limit to check records against.
        tokenizer_name: the tokenizer's name for the report.
        max_errors: at most this many per-record problems are listed (all invalid records are counted).

    Returns:
        The report.

    Raises:
        CryptotuneError: DATA_INVALID for whole-file problems (including a file with no records).
    """
    resolved = detect_file_format(path, display_name=display_name, file_format=file_format)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="inspect-encode") as encoder:
        collector = _Collector(tokenizer, max(0, sample), max_seq_length, max_errors, encoder)
        shapes = collector.shapes
        for raw in iter_raw_records(path, display_name=display_name, file_format=resolved):
            collector.total += 1
            if isinstance(raw.value, dict):
                shape = detect_source_format(raw.value)
                if shape is not None:
                    shapes[shape] += 1
            item = convert_record(raw, data_format=data_format)
            if isinstance(item, Record):
                collector.add_record(item, raw.value)
            else:
                collector.add_problems(item)
        collector.finish()
    if collector.total == 0:
        raise CryptotuneError(ErrorCode.DATA_INVALID, f"{display_name}: no records")
    return InspectionReport(
        format=resolved,
        source_format=collector.source_format(),
        records_total=collector.total,
        records_valid=collector.valid,
        records_invalid=collector.invalid,
        errors=collector.errors,
        warnings=collector.warnings(),
        difficulty_counts=dict(collector.difficulty),
        with_thinking=collector.with_thinking,
        crypto_terms_top=collector.terms.most_common(TOP_TERMS),
        duplicates=collector.duplicates,
        token_lengths=length_stats(collector.lengths["total"]),
        token_lengths_by_part={part: length_stats(values) for part, values in collector.lengths.items()},
        over_max_seq_length=collector.over,
        over_max_seq_length_indices=collector.over_indices,
        max_seq_length=max_seq_length,
        tokenizer=tokenizer_name,
        samples=collector.samples,
    )
