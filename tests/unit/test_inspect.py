"""Data inspection: counts, warnings, token lengths and samples, in one bounded pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cryptotune_daemon.data.inspect import InspectionReport, inspect_data, length_stats
from cryptotune_daemon.data.readers import RawRecord, convert_record
from cryptotune_daemon.data.records import Record
from cryptotune_daemon.data.template import render_record
from cryptotune_daemon.data.tokenizer import tokenize_sample
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    return path


def inspect(path: Path, tokenizer: Any, **kwargs: Any) -> InspectionReport:
    return inspect_data(path, display_name=path.name, tokenizer=tokenizer, **kwargs)


def warning_about(report: InspectionReport, field: str, fragment: str) -> bool:
    return any(w.field == field and fragment in w.message and w.index == -1 for w in report.warnings)


NATIVE_ROWS: list[Any] = [
    {
        "instruction": "什么是AES？",
        "output": "AES是对称分组密码。",
        "thinking": "<thinking>\n用户问AES。\n</thinking>",
        "crypto_terms": ["AES", "分组密码"],
        "difficulty": 1,
        "id": "a1",
    },
    {
        "instruction": "  什么是AES？\n",
        "output": "另一种说法。",
        "thinking": "<thinking>重复的问题。</thinking>",
        "crypto_terms": ["AES"],
        "difficulty": "BEGINNER",
        "id": "a2",
    },
    {"instruction": "RSA基于什么？", "output": "", "difficulty": 2},
    {
        "instruction": "解释ECDH。",
        "output": "椭圆曲线上的密钥交换。" * 40,
        "crypto_terms": ["ECDH"],
        "difficulty": 1,
    },
    {
        "instruction": "什么是AES？",
        "input": "附加材料",
        "output": "不同的输入，不算重复。",
        "thinking": "<thinking>有输入。</thinking>",
        "difficulty": 1,
        "source": "web",
    },
    "not an object",
]


def test_native_file_report(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "native.jsonl", NATIVE_ROWS)
    report = inspect(path, qwen3_tokenizer, sample=2, max_seq_length=200, tokenizer_name="qwen3")
    assert report.format == "jsonl"
    assert report.source_format == "native"
    assert (report.records_total, report.records_valid, report.records_invalid) == (6, 4, 2)
    assert [(e.line, e.index, e.field) for e in report.errors] == [(3, 2, "output"), (6, 5, "")]
    assert report.difficulty_counts == {"1": 4, "2": 0, "3": 0, "4": 0, "unknown": 0}
    assert report.with_thinking == 3
    assert report.crypto_terms_top == [("AES", 2), ("分组密码", 1), ("ECDH", 1)]
    assert report.duplicates == 1
    assert report.max_seq_length == 200
    assert report.tokenizer == "qwen3"

    valid = [item for item in (convert_record(RawRecord(i, i + 1, row)) for i, row in enumerate(NATIVE_ROWS))]
    samples = [tokenize_sample(qwen3_tokenizer, render_record(r), r) for r in valid if isinstance(r, Record)]
    totals = sorted(s.total for s in samples)
    assert report.token_lengths == length_stats(totals)
    assert report.token_lengths["max"] == totals[-1] > 200
    assert report.token_lengths_by_part["total"] == report.token_lengths
    assert report.token_lengths_by_part["prompt"] == length_stats([s.prompt_tokens for s in samples])
    assert report.token_lengths_by_part["reasoning"]["min"] == 0
    assert report.token_lengths_by_part["answer"] == length_stats([s.answer_tokens for s in samples])
    assert (report.over_max_seq_length, report.over_max_seq_length_indices) == (1, [3])

    assert [s["index"] for s in report.samples] == [0, 1]
    first = report.samples[0]
    assert first["line"] == 1
    assert first["record"] == NATIVE_ROWS[0]
    rendered = render_record(valid[0])  # type: ignore[arg-type]
    assert (first["rendered_text"], first["trained_text"]) == (rendered.text, rendered.trained)
    assert first["tokens"] == samples[0].total

    assert warning_about(report, "difficulty", "no record has difficulty 2, 3, 4")
    assert warning_about(report, "thinking", "1 of 4 valid records (25.0%) have no thinking")
    assert warning_about(report, "instruction", "1 records repeat the instruction and input")
    assert warning_about(report, "", "1 records are longer than max_seq_length=200 tokens (e.g. indices 3)")
    assert warning_about(report, "", "they will be refused at training")
    assert warning_about(report, "id", "key 'id' is not used by the trainer and is ignored (2 records)")
    assert warning_about(
        report, "source", "key 'source' is not used by the trainer and is ignored (1 records)"
    )
    assert sum(1 for w in report.warnings if w.field == "id") == 1


def test_difficulty_imbalance_warning(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    rows = [
        {"instruction": f"q{i}", "output": "a", "thinking": "t", "difficulty": level}
        for i, level in enumerate([1, 1, 1, 2, 3, 4])
    ]
    report = inspect(write_jsonl(tmp_path / "imbalanced.jsonl", rows), qwen3_tokenizer)
    assert warning_about(report, "difficulty", "difficulty levels are imbalanced (1: 3, 2: 1, 3: 1, 4: 1)")
    balanced = [
        {"instruction": f"q{i}", "output": "a", "thinking": "t", "difficulty": 1 + i % 4} for i in range(8)
    ]
    report = inspect(write_jsonl(tmp_path / "balanced.jsonl", balanced), qwen3_tokenizer)
    assert report.warnings == []
    assert report.difficulty_counts == {"1": 2, "2": 2, "3": 2, "4": 2, "unknown": 0}


def test_batches_and_json_array(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    rows = [
        {
            "instruction": f"第{i}题：什么是哈希？",
            "output": "单向函数。" * (1 + i % 5),
            "thinking": "想",
            "difficulty": 1 + i % 4,
        }
        for i in range(600)
    ]
    path = tmp_path / "many.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    report = inspect(path, qwen3_tokenizer, sample=3)
    assert report.format == "json"
    assert (report.records_total, report.records_valid, report.duplicates) == (600, 600, 0)
    assert [s["index"] for s in report.samples] == [0, 1, 2]
    assert [s["record"] for s in report.samples] == rows[:3]
    assert (
        report.token_lengths["min"]
        < report.token_lengths["p50"]
        <= report.token_lengths["p99"]
        <= report.token_lengths["max"]
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"instruction": "q", "output": "a"}, "alpaca"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "openai"),
    ],
)
def test_source_formats(tmp_path: Path, qwen3_tokenizer: Any, row: dict[str, Any], expected: str) -> None:
    assert inspect(write_jsonl(tmp_path / "one.jsonl", [row]), qwen3_tokenizer).source_format == expected


def test_mixed_source_format(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    rows = [
        {"instruction": "q", "output": "a", "difficulty": 1},
        {"instruction": "q2", "output": "a"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    assert inspect(write_jsonl(tmp_path / "mixed.jsonl", rows), qwen3_tokenizer).source_format == "mixed"
    assert (
        inspect(write_jsonl(tmp_path / "native.jsonl", rows[:2]), qwen3_tokenizer).source_format == "native"
    )


def test_empty_array_is_an_error(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    path = tmp_path / "empty.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(CryptotuneError) as caught:
        inspect(path, qwen3_tokenizer)
    assert caught.value.code is ErrorCode.DATA_INVALID
    assert "no records" in caught.value.message


def test_errors_are_capped_but_counted(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    rows = [{"instruction": "", "output": "a"}] * 30 + [{"instruction": "q", "output": "a"}]
    report = inspect(write_jsonl(tmp_path / "bad.jsonl", rows), qwen3_tokenizer, max_errors=10)
    assert (report.records_invalid, len(report.errors)) == (30, 10)
    assert warning_about(report, "", "30 records are invalid; only the first 10 are listed")


def test_every_problem_of_a_record_is_listed_but_the_record_counts_once(
    tmp_path: Path, qwen3_tokenizer: Any
) -> None:
    rows = [
        {"instruction": "q", "output": "a", "difficulty": 1},
        {"instruction": 5, "output": "x", "difficulty": "hard"},
    ]
    report = inspect(write_jsonl(tmp_path / "bad.jsonl", rows), qwen3_tokenizer)
    assert (report.records_total, report.records_valid, report.records_invalid) == (2, 1, 1)
    assert [(e.line, e.index, e.field) for e in report.errors] == [
        (2, 1, "instruction"),
        (2, 1, "difficulty"),
    ]
    assert not [w for w in report.warnings if "are invalid" in w.message]


def test_capped_problems_of_multi_field_records_are_counted(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    rows = [{"instruction": 5, "output": 6, "difficulty": 9}] * 4 + [{"instruction": "q", "output": "a"}]
    report = inspect(write_jsonl(tmp_path / "bad.jsonl", rows), qwen3_tokenizer, max_errors=5)
    assert (report.records_invalid, len(report.errors)) == (4, 5)
    assert [(e.index, e.field) for e in report.errors] == [
        (0, "instruction"),
        (0, "output"),
        (0, "difficulty"),
        (1, "instruction"),
        (1, "output"),
    ]
    assert warning_about(
        report, "", "4 records are invalid with 12 problems in all; only the first 5 problems are listed"
    )


def test_report_is_json_and_proto_friendly(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    from cryptotune_daemon.services import serde

    report = inspect(write_jsonl(tmp_path / "native.jsonl", NATIVE_ROWS), qwen3_tokenizer, sample=1)
    as_dict = json.loads(json.dumps(report.to_dict(), ensure_ascii=False))
    assert as_dict["crypto_terms_top"][0] == ["AES", 2]
    assert as_dict["errors"][0] == {
        "line": 3,
        "index": 2,
        "field": "output",
        "message": report.errors[0].message,
    }
    assert set(as_dict) == {
        "format",
        "source_format",
        "records_total",
        "records_valid",
        "records_invalid",
        "errors",
        "warnings",
        "difficulty_counts",
        "with_thinking",
        "crypto_terms_top",
        "duplicates",
        "token_lengths",
        "token_lengths_by_part",
        "over_max_seq_length",
        "over_max_seq_length_indices",
        "max_seq_length",
        "tokenizer",
        "samples",
    }
    message = serde.inspection(report)
    assert message.records_valid == 4
    assert json.loads(message.samples[0].record_json) == NATIVE_ROWS[0]


def test_length_stats_nearest_rank() -> None:
    assert length_stats([]) == {"min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    assert length_stats(list(range(100, 0, -1))) == {"min": 1, "p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert length_stats([7]) == {"min": 7, "p50": 7, "p90": 7, "p99": 7, "max": 7}


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_file():
        pytest.skip(
            f"third-party dataset {path} is absent (expected beside the repository in shared/datasets)"
        )
    return path


def test_llamafactory_alpaca_inspection(qwen3_tokenizer: Any) -> None:
    path = dataset("llamafactory_alpaca_zh_demo.json")
    report = inspect(path, qwen3_tokenizer, sample=1)
    assert (report.format, report.source_format) == ("json", "alpaca")
    assert (report.records_total, report.records_valid, report.records_invalid) == (1000, 1000, 0)
    assert report.difficulty_counts["unknown"] == 1000
    assert report.with_thinking == 0
    assert warning_about(report, "thinking", "1000 of 1000 valid records (100.0%) have no thinking")
    assert warning_about(report, "difficulty", "no record has a 'difficulty'")


def test_llamafactory_sharegpt_toolcall_inspection(qwen3_tokenizer: Any) -> None:
    path = dataset("llamafactory_sharegpt_toolcall_zh_demo.json")
    report = inspect(path, qwen3_tokenizer)
    assert report.source_format == "sharegpt"
    assert report.records_total == 300
    assert report.records_valid + report.records_invalid == 300
    # Records with tool calls and tool definitions have a problem in each field: every one is
    # listed, but each record is counted once.
    assert len(report.errors) > report.records_invalid
    assert len({e.index for e in report.errors}) == report.records_invalid
    assert len({(e.index, e.field) for e in report.errors}) == len(report.errors)
    assert not [w for w in report.warnings if "are invalid" in w.message]
