"""Inspection's token counts (one batched encode, the trained text's count derived) equal the counts of
tokenising every part, whatever the record's edges look like."""

from __future__ import annotations

import random
from typing import Any

from cryptotune_daemon.data.records import Record
from cryptotune_daemon.data.template import render_record
from cryptotune_daemon.data.token_counts import count_tokens
from cryptotune_daemon.data.tokenizer import tokenize_samples

# Edges that move where the split regex starts a piece: punctuation that takes the newline along,
# whitespace and line breaks, digits, contractions, combining marks, added tokens, emoji.
PIECES = (
    "。",
    ".",
    "!",
    "！",
    "?",
    " ",
    "  ",
    "\t",
    "\r",
    "\n",
    "\r\n",
    "a",
    "Z",
    "1",
    "١",
    "²",
    "中",
    "é",
    "e\u0301",
    "\u0301",
    "'s",
    "'",
    "'ll",
    "<think>",
    "</think>",
    "<|im_end|>",
    "<|endoftext|>",
    "<",
    ">",
    "😀",
    "—",
    "…",
    "...",
    "，",
    "::",
    " \n",
    "x ",
    "12",
    "①",
    "ﬁ",
    "Å",
    "\u00a0",
    "\u3000",
    "\x1c",
    "$",
)


def _records(count: int) -> list[Record]:
    rng = random.Random(7)
    records = []
    for index in range(count):
        reasoning = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))
        answer = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))
        records.append(
            Record(
                index=index,
                line=index + 1,
                instruction="请说明 AES 的作用" + rng.choice(PIECES),
                input=rng.choice(("", "GCM 模式", " x\n")),
                output=answer + rng.choice(("", "答案是 AES-256。", " ok")),
                reasoning=rng.choice(("", "先回忆定义，", "think ")) + reasoning,
                has_thinking=True,
            )
        )
    return records


def test_counts_equal_those_of_tokenising_each_part(qwen3_tokenizer: Any) -> None:
    pairs = [(render_record(record), record) for record in _records(3000)]
    expected = [
        (s.prompt_tokens, s.reasoning_tokens, s.answer_tokens, s.total)
        for s in tokenize_samples(qwen3_tokenizer, pairs)
    ]
    counted = [
        (c.prompt_tokens, c.reasoning_tokens, c.answer_tokens, c.total)
        for c in count_tokens(qwen3_tokenizer, pairs)
    ]
    assert counted == expected
