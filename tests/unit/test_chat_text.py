"""Chat text: prompts rendered by the official template; pieces split at </think> into reasoning, answer."""

from __future__ import annotations

from typing import Any

import pytest

from cryptotune_daemon.data.template import render_prompt
from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.training.chat import ChannelSplitter, render_chat

THINK_CLOSE, END = 900, 901
WORDS = {1: "先", 2: "想", 3: "\n", 4: "\n\n", 5: "答", 6: "案", THINK_CLOSE: "</think>"}


def _decode(ids: list[int]) -> str:
    return "".join(WORDS.get(i, "\ufffd") for i in ids)


def test_pieces_switch_from_reasoning_to_answer_at_think_close() -> None:
    splitter = ChannelSplitter(_decode, THINK_CLOSE, {END})
    pieces = [piece for token in (1, 2, 3, THINK_CLOSE, 4, 5, 6, END) for piece in splitter.feed(token)]
    assert pieces == [
        ("reasoning", "先"),
        ("reasoning", "想"),
        ("reasoning", "\n"),
        ("answer", "\n\n"),
        ("answer", "答"),
        ("answer", "案"),
    ]
    assert splitter.parts() == ("先想", "答案")


def test_a_cut_character_waits_for_its_other_half() -> None:
    halves = {7: "\ufffd"}

    def decode(ids: list[int]) -> str:
        text = _decode([i for i in ids if i not in (7, 8)])
        return text + ("字" if 8 in ids else halves[7] if 7 in ids else "")

    splitter = ChannelSplitter(decode, THINK_CLOSE, {END})
    assert splitter.feed(7) == []
    assert splitter.feed(8) == [("reasoning", "字")]


def test_the_prompt_is_the_official_templates_and_drops_earlier_reasoning(qwen3_tokenizer: Any) -> None:
    tokenizer = qwen3_tokenizer
    assert render_chat(tokenizer, (("user", "什么是SM4？"),)) == render_prompt("什么是SM4？")
    history = (("user", "q1"), ("assistant", "<think>\nold thoughts\n</think>\n\na1"), ("user", "q2"))
    text = render_chat(tokenizer, history)
    assert "old thoughts" not in text
    assert text.endswith("<|im_start|>assistant\na1<|im_end|>\n" + render_prompt("q2"))
    with pytest.raises(CryptotuneError, match="user turn"):
        render_chat(tokenizer, (("user", "q"), ("assistant", "a")))
