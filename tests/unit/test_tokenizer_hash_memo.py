"""The Qwen3 tokenizer's hash is computed once per build of the daemon's cached tokenizer, not per job."""

from __future__ import annotations

import os
from pathlib import Path

from cryptotune_daemon.training.hashing import remembered_tokenizer_hash, tokenizer_hash


class _Backend:
    def __init__(self, text: str) -> None:
        self.text = text
        self.serialised = 0

    def to_str(self) -> str:
        self.serialised += 1
        return self.text


class _Tokenizer:
    eos_token = "<|im_end|>"
    pad_token = "<|endoftext|>"
    bos_token = None
    chat_template = "t"

    def __init__(self, text: str) -> None:
        self.backend_tokenizer = _Backend(text)

    def get_added_vocab(self) -> dict[str, int]:
        return {"<think>": 151667}


def test_the_hash_is_remembered_until_the_tokenizer_file_changes(tmp_path: Path) -> None:
    source, memo = tmp_path / "tokenizer.json", tmp_path / "memo" / "qwen3.hash.json"
    source.write_text("v1")
    first = _Tokenizer("v1")
    expected = tokenizer_hash(_Tokenizer("v1"))
    assert remembered_tokenizer_hash(first, source, memo) == expected
    again = _Tokenizer("v1")
    assert remembered_tokenizer_hash(again, source, memo) == expected
    assert again.backend_tokenizer.serialised == 0, "a second job does not serialise the tokenizer again"

    source.write_text("v2 rebuilt")  # the daemon rebuilt its tokenizer cache
    os.utime(source, ns=(1, 1))
    rebuilt = _Tokenizer("v2 rebuilt")
    assert remembered_tokenizer_hash(rebuilt, source, memo) == tokenizer_hash(_Tokenizer("v2 rebuilt"))
    assert rebuilt.backend_tokenizer.serialised == 1


def test_an_unreadable_memo_is_recomputed(tmp_path: Path) -> None:
    source, memo = tmp_path / "tokenizer.json", tmp_path / "qwen3.hash.json"
    source.write_text("v1")
    memo.write_text("not json")
    tokenizer = _Tokenizer("v1")
    assert remembered_tokenizer_hash(tokenizer, source, memo) == tokenizer_hash(_Tokenizer("v1"))
    assert tokenizer.backend_tokenizer.serialised == 1
