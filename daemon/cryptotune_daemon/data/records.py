"""The normalised training record every input format is converted into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Record:
    """One training sample: a user turn and an assistant turn with optional reasoning.

    Attributes:
        index: 0-based position of the record in its file.
        line: 1-based line where the record starts in its file.
        instruction: the user's question.
        input: optional context appended to the user turn after a newline ("" when absent).
        output: the assistant's final answer.
        reasoning: the reasoning trace without its ``<thinking>`` wrapper, stripped of
            leading/trailing newlines ("" when the record has none).
        has_thinking: whether the record carried a reasoning trace at all.
        crypto_terms: terms the answer is expected to mention (used for recall metrics).
        difficulty: 1 (beginner) to 4 (expert), or None when unknown.
    """

    index: int
    line: int
    instruction: str
    input: str
    output: str
    reasoning: str = ""
    has_thinking: bool = False
    crypto_terms: tuple[str, ...] = ()
    difficulty: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class RecordProblem:
    """A problem with one record (or, with index -1, with the whole file).

    Attributes:
        line: 1-based line where the record starts (0 when unknown).
        index: 0-based record index (-1 for whole-file problems).
        field: the offending field name ("" when the record as a whole is wrong).
        message: what is wrong and how to fix it.
    """

    line: int
    index: int
    field: str
    message: str
