"""Token counts of rendered records for inspect-data: per part (prompt, reasoning, answer) from one
batched call of the fast tokenizer's backend, equal to what :func:`tokenize_samples` would count."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptotune_daemon.data.records import Record
from cryptotune_daemon.data.template import IM_END, THINK_CLOSE, RenderedSample, render_prompt, render_record
from cryptotune_daemon.data.tokenizer import QWEN3_PATTERN, tokenize_samples

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenCounts:
    """A rendered record's token counts, equal to its :class:`TokenizedSample`'s (without the ids)."""

    prompt_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    total: int


def _lengths(backend: Any, texts: list[str]) -> list[int]:
    """Token counts of ``texts`` from one batched call of a ``tokenizers.Tokenizer`` (its own threads)."""
    return [len(encoding) for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def _splits_like_qwen3(backend: Any) -> bool:
    """Whether ``backend`` tokenises as Qwen3 does: NFC, Qwen's split regex, byte-level BPE, and
    ``</think>`` and ``<|im_end|>`` as added tokens (so the text between them is encoded on its own)."""
    normalizer = json.loads(backend.normalizer.__getstate__()) if backend.normalizer is not None else None
    pre_tokenizer = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer else {}
    steps = pre_tokenizer.get("pretokenizers", [])
    added = {token.content for token in backend.get_added_tokens_decoder().values()}
    return (
        normalizer in (None, {"type": "NFC"})
        and [step.get("type") for step in steps] == ["Split", "ByteLevel"]
        and steps[0].get("pattern") == {"Regex": QWEN3_PATTERN}
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and steps[1].get("use_regex") is False
        and {THINK_CLOSE, IM_END} <= added
    )


def _reasoning_tail(reasoning: str, added_tokens: set[str]) -> str | None:
    """The end of ``reasoning`` after its last letter or digit: Qwen's split regex always starts a
    piece there, so the reasoning's tokens are those before it plus this tail's, and the trained text
    (which continues with a newline) differs only in the tail. None when that does not hold: an added
    token in the reasoning, or a combining mark in the tail (NFC may join it to the letter)."""
    if "<" in reasoning and any(token in reasoning for token in added_tokens):
        return None
    end = len(reasoning)
    while end and unicodedata.category(reasoning[end - 1])[0] not in "LN":
        end -= 1
    tail = reasoning[end:]
    if any(unicodedata.category(char)[0] == "M" for char in tail):
        return None
    return tail


def _answer_starts_a_piece(answer: str) -> bool:
    """Whether, after ``</think>``, the split regex's ``\\s*[\\r\\n]+`` piece ends with the template's
    two newlines (it would take a line break from the answer's leading whitespace along)."""
    lead = answer[: len(answer) - len(answer.lstrip())]
    return "\r" not in lead and "\n" not in lead


class TokenCounter:
    """Counts records' tokens per part in batches, equal to :func:`tokenize_samples`' counts, with about
    half the tokenizer work: what inspection needs.

    A batch goes through three steps so the tokenizer's work can overlap the caller's Python:
    :meth:`texts` (Python), :meth:`encode` (one batched call of the fast tokenizer's backend: its own
    Rust threads, without the GIL and without Python lists of ids; safe to run in another thread)
    and :meth:`part_lengths` (Python).

    The prompts, reasonings and answers are encoded; the trained text's count follows from the
    reasoning's and the answer's without encoding it: ``</think>`` and ``<|im_end|>`` are added
    tokens, which split the text before the regex does, and the regex starts a new piece after the
    reasoning's last letter or digit and after the answer's leading newlines, so the trained text
    adds only the tokens of ``tail + "\\n"`` (instead of ``tail``) and of ``"\\n\\n"`` and the two
    added tokens. Records where that reasoning does not hold (see :func:`_reasoning_tail`) have
    their trained text encoded; tokenizers that do not split as Qwen3's does tokenise every part
    (:func:`tokenize_samples`) in :meth:`part_lengths`, and :meth:`encode` does nothing for them.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
        self._backend = backend if backend is not None and _splits_like_qwen3(backend) else None
        self._added_tokens: set[str] = set()
        self._glue = 0
        self._tails: dict[str, int] = {}  # few distinct tails ("。", "."): each is encoded once
        if self._backend is not None:
            self._added_tokens = {
                token.content for token in self._backend.get_added_tokens_decoder().values()
            }
            self._glue = sum(_lengths(self._backend, ["\n\n", THINK_CLOSE, IM_END]))

    def texts(self, records: Sequence[Record]) -> list[str]:
        """What :meth:`encode` encodes for a batch: its prompts, then reasonings, then answers."""
        if self._backend is None:
            return []
        texts = [render_prompt(record.instruction, record.input) for record in records]
        texts += [record.reasoning.strip("\n") for record in records]
        texts += [record.output.lstrip("\n") for record in records]
        return texts

    def encode(self, texts: list[str]) -> list[int]:
        """The token count of each text (the tokenizer's threads; the GIL is released meanwhile)."""
        return _lengths(self._backend, texts) if texts else []

    def part_lengths(
        self, records: Sequence[Record], texts: list[str], lengths: list[int]
    ) -> tuple[list[int], list[int], list[int], list[int]]:
        """(prompt, reasoning, answer, total) token counts of each record, from :meth:`encode`'s
        ``lengths`` of :meth:`texts`' ``texts`` for the same records."""
        if self._backend is None:
            samples = tokenize_samples(
                self._tokenizer, [(render_record(record), record) for record in records]
            )
            return (
                [sample.prompt_tokens for sample in samples],
                [sample.reasoning_tokens for sample in samples],
                [sample.answer_tokens for sample in samples],
                [sample.total for sample in samples],
            )
        count = len(records)
        prompts = lengths[:count]
        reasonings = lengths[count : 2 * count]
        answers = lengths[2 * count :]
        tails = self._tails
        totals: list[int] = []
        encode_whole: list[int] = []
        for position in range(count):
            tail = _reasoning_tail(texts[count + position], self._added_tokens)
            if tail is None or not _answer_starts_a_piece(texts[2 * count + position]):
                encode_whole.append(position)
                totals.append(0)
                continue
            for text in (tail, tail + "\n"):
                if text not in tails:
                    tails[text] = _lengths(self._backend, [text])[0]
            reasoning_line = reasonings[position] - tails[tail] + tails[tail + "\n"]
            totals.append(prompts[position] + reasoning_line + self._glue + answers[position])
        if encode_whole:
            whole = _lengths(self._backend, [render_record(records[p]).trained for p in encode_whole])
            for position, length in zip(encode_whole, whole, strict=True):
                totals[position] = prompts[position] + length
        return prompts, reasonings, answers, totals


def count_tokens(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[RenderedSample, Record]]
) -> list[TokenCounts]:
    """Token counts per part, equal to :func:`tokenize_samples`' for the same pairs, with about half the
    tokenizer work (see :class:`TokenCounter`)."""
    counter = TokenCounter(tokenizer)
    records = [record for _, record in pairs]
    texts = counter.texts(records)
    parts = counter.part_lengths(records, texts, counter.encode(texts))
    return [TokenCounts(*counts) for counts in zip(*parts, strict=True)]
