"""inspect-data's report on varied files stays identical, field for field, to the one recorded in
``fixtures/inspect/*.report.json`` (written by the inspection before its speed-ups).

The files mix every shape and problem inspection distinguishes — native/alpaca/sharegpt/openai
records, invalid JSON lines, bad fields, escaped and raw text, CRLF, lone surrogates and control
characters, duplicates, records over ``max_seq_length``, reasoning and answer edges that change
how the trained text tokenises — in enough records to cross the batch boundaries. Regenerate the
expected reports only when the report is meant to change:
``python tests/unit/test_inspect_report_golden.py``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "inspect"
RECORDS = 2600  # more than two tokenizer batches

TERMS = ("AES", "RSA", "ECDH", "SHA-256", "HMAC", "ChaCha20", "椭圆曲线", "分组密码")
TEXTS = (
    "什么是{t}？",
    "Explain {t} in one paragraph.",
    "  {t} 的安全性依赖于什么？\n",
    "Why is {t} used in TLS 1.3?",
    "请说明 {t} 的作用，并举例说明。",
    "{t}",
)
# Reasoning and answer edges that move where Qwen's split regex starts a piece.
EDGES = ("。", ".", "!", " ", "\n", "\r\n", "e\u0301", "\u0301", "1", "'s", "😀", "…", " \n", "\t", "")


def _text(rng: random.Random, term: str) -> str:
    return rng.choice(TEXTS).format(t=term)


def _native(rng: random.Random, index: int) -> dict[str, Any]:
    term = rng.choice(TERMS)
    row: dict[str, Any] = {
        "instruction": _text(rng, term) + (f"（第 {index} 题）" if rng.random() < 0.8 else ""),
        "output": rng.choice(("", "\n", " \n", "\r\n"))
        + f"{term} 是一种密码学构件。" * rng.randint(1, 6)
        + rng.choice(EDGES),
    }
    if rng.random() < 0.3:
        row["input"] = rng.choice(("", "附加材料", "context:\r\nline two", " "))
    if rng.random() < 0.8:
        inner = rng.choice(("", "\n", "\n\n")) + f"先回忆 {term} 的定义" * rng.randint(1, 4)
        inner += rng.choice(EDGES) + rng.choice(("", "\n"))
        row["thinking"] = rng.choice((f"<thinking>{inner}</thinking>", f"<think>{inner}</think>", inner))
    if rng.random() < 0.7:
        row["crypto_terms"] = rng.sample(TERMS, rng.randint(0, 3))
    if rng.random() < 0.9:
        row["difficulty"] = rng.choice((1, 2, 3, 4, 1, 1, "BEGINNER", "专家", "2", 3.0))
    if rng.random() < 0.05:
        row[rng.choice(("id", "source", "meta"))] = {"k": [index, "v"]}
    return row


def _problem(rng: random.Random, index: int) -> Any:
    kind = rng.randrange(14)
    if kind == 0:
        return {"instruction": "", "output": "a"}
    if kind == 1:
        return {"instruction": 5, "output": 6, "difficulty": 9}
    if kind == 2:
        return {"instruction": "q\u0000x", "output": "a\x07", "thinking": "t"}
    if kind == 3:
        return {"instruction": "lone \ud800 surrogate", "output": "a"}
    if kind == 4:
        return {"instruction": "q", "output": "a <|im_end|> b"}
    if kind == 5:
        return {"instruction": "q", "output": "a", "thinking": "<thinking>never closed"}
    if kind == 6:
        return {"instruction": "q", "output": "a", "thinking": "x </think> y"}
    if kind == 7:
        return {"instruction": "q", "output": "a", "images": ["x.png"], "system": "be nice"}
    if kind == 8:
        return "not an object"
    if kind == 9:
        return {"nothing": "here"}
    if kind == 10:
        return {"instruction": "q", "output": "a", "crypto_terms": "AES", "difficulty": "hard"}
    if kind == 11:
        return {"instruction": "q", "output": "a", "history": [["x", "y"]]}
    if kind == 12:
        return {"instruction": "key \u0001 in a nested value", "output": "a", "meta": {"bad\u0002key": 1}}
    return {"instruction": "q", "output": "a", "crypto_terms": ["AES", 3]}


def _chat(rng: random.Random, index: int) -> dict[str, Any]:
    answer = rng.choice(("<think>\n想一想。\n</think>\n\n", "", "<think></think>")) + f"答案 {index}。"
    if rng.random() < 0.5:
        turns = [{"from": "human", "value": f"问题 {index}"}, {"from": "gpt", "value": answer}]
        return {"conversations": turns}
    return {
        "messages": [
            {"role": "user", "content": f"question {index}\r\n"},
            {"role": "assistant", "content": answer},
        ]
    }


def rows(seed: int, count: int = RECORDS, *, chats: bool = True) -> list[Any]:
    """Deterministic varied rows: mostly native records, some problems, duplicates and chats."""
    rng = random.Random(seed)
    made: list[Any] = []
    for index in range(count):
        roll = rng.random()
        if roll < 0.06:
            made.append(_problem(rng, index))
        elif roll < 0.09 and made:
            made.append(rng.choice(made))  # an exact or near duplicate
        elif roll < 0.12 and chats:
            made.append(_chat(rng, index))
        else:
            made.append(_native(rng, index))
    return made


def write_jsonl(path: Path, items: list[Any], *, ensure_ascii: bool, crlf: bool = False) -> Path:
    lines = [json.dumps(item, ensure_ascii=ensure_ascii) for item in items]
    rng = random.Random(len(items))
    for position in rng.sample(range(len(lines)), 5):
        lines[position] = lines[position][: len(lines[position]) // 2]  # not JSON
    lines.insert(3, "")
    text = ("\r\n" if crlf else "\n").join(lines) + "\n"
    # A lone surrogate cannot be UTF-8: written as its JSON escape, as a JSON writer would.
    path.write_bytes(text.encode("utf-8", "backslashreplace"))
    return path


def write_json(path: Path, items: list[Any]) -> Path:
    path.write_text(json.dumps(items, ensure_ascii=True, indent=1), encoding="utf-8")
    return path


# name → (writer, inspect_data keyword arguments)
CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "varied_utf8.jsonl": (
        lambda path: write_jsonl(path, rows(1), ensure_ascii=False),
        {"sample": 3, "max_seq_length": 96, "max_errors": 40},
    ),
    "varied_escaped_crlf.jsonl": (
        lambda path: write_jsonl(path, rows(2), ensure_ascii=True, crlf=True),
        {"sample": 2, "max_seq_length": 128},
    ),
    "native_only.jsonl": (
        lambda path: write_jsonl(path, rows(3, chats=False), ensure_ascii=False),
        {"sample": 1, "max_seq_length": 64, "data_format": "native"},
    ),
    "varied.json": (
        lambda path: write_json(path, rows(4, 1500)),
        {"sample": 2, "max_seq_length": 80, "max_errors": 1000},
    ),
}


def report_of(name: str, directory: Path, tokenizer: Any) -> dict[str, Any]:
    from cryptotune_daemon.data.inspect import inspect_data

    writer, options = CASES[name]
    path = writer(directory / name)
    report = inspect_data(path, display_name=name, tokenizer=tokenizer, **options)
    return json.loads(json.dumps(report.to_dict(), ensure_ascii=False))


@pytest.mark.parametrize("name", sorted(CASES))
def test_report_equals_the_recorded_one(name: str, tmp_path: Path, qwen3_tokenizer: Any) -> None:
    expected = json.loads((FIXTURES / f"{name}.report.json").read_text(encoding="utf-8"))
    actual = report_of(name, tmp_path, qwen3_tokenizer)
    for key in expected:
        assert actual[key] == expected[key], key
    assert actual == expected


def _regenerate() -> None:  # pragma: no cover - a maintenance script
    import tempfile

    from cryptotune_daemon.data.tokenizer import BUILTIN_TINY_QWEN3, load_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = load_tokenizer(BUILTIN_TINY_QWEN3, Path(scratch) / "cache")
        for name in sorted(CASES):
            report = report_of(name, Path(scratch), tokenizer)
            target = FIXTURES / f"{name}.report.json"
            target.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            counts = f"{report['records_total']} records, {report['records_valid']} valid"
            print(f"{target}: {counts}", file=sys.stderr)


if __name__ == "__main__":
    _regenerate()
