"""Text JSON accepts but training cannot: lone surrogates and stray controls, in every record format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cryptotune_daemon.data.inspect import inspect_data
from cryptotune_daemon.data.readers import iter_records
from cryptotune_daemon.data.records import Record, RecordProblem
from cryptotune_daemon.data.text_checks import has_bad_text, scan_text
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.dataset import read_records

SURROGATE = "\ud800"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    # ensure_ascii=True: the surrogate travels as the escape "\ud800", exactly as broken exporters write it.
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def read(path: Path) -> list[Record | RecordProblem]:
    return list(iter_records(path, display_name=path.name))


def alpaca(**fields: Any) -> dict[str, Any]:
    return {"instruction": "什么是AES？", "output": "对称分组密码。", **fields}


def openai(question: str = "q", answer: str = "a", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer, **extra}]
    return {"messages": messages}


def sharegpt(question: str = "q", answer: str = "a") -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


# (record, field the problem names, the path quoted in the message)
BAD_PLACES: list[tuple[dict[str, Any], str, str]] = [
    (alpaca(instruction=f"AES{SURROGATE}是什么"), "instruction", "'instruction'"),
    (alpaca(input=f"上下文{SURROGATE}"), "input", "'input'"),
    (alpaca(output=f"答{SURROGATE}"), "output", "'output'"),
    (alpaca(thinking=f"<thinking>想{SURROGATE}</thinking>"), "thinking", "'thinking'"),
    (alpaca(crypto_terms=["AES", f"R{SURROGATE}SA"]), "crypto_terms", "'crypto_terms[1]'"),
    (alpaca(difficulty=f"BEGINNER{SURROGATE}"), "difficulty", "'difficulty'"),
    (alpaca(id=f"x{SURROGATE}"), "id", "'id'"),
    (openai(question=f"q{SURROGATE}"), "messages", "'messages[0].content'"),
    (openai(answer=f"a{SURROGATE}"), "messages", "'messages[1].content'"),
    (openai(reasoning_content=f"r{SURROGATE}"), "messages", "'messages[1].reasoning_content'"),
    (sharegpt(question=f"q{SURROGATE}"), "conversations", "'conversations[0].value'"),
    (sharegpt(answer=f"a{SURROGATE}"), "conversations", "'conversations[1].value'"),
]


@pytest.mark.parametrize(("row", "field", "path"), BAD_PLACES)
def test_a_lone_surrogate_anywhere_is_a_per_record_problem(
    tmp_path: Path, row: dict[str, Any], field: str, path: str
) -> None:
    data = write_jsonl(tmp_path / "wild.jsonl", [alpaca(), row, alpaca(instruction="另一个问题")])
    items = read(data)
    bad = [item for item in items if isinstance(item, RecordProblem)]
    assert [item.index for item in items if isinstance(item, Record)] == [0, 2]
    assert bad and all(p.index == 1 and p.line == 2 for p in bad)
    problem = next(p for p in bad if "U+D800" in p.message)
    assert problem.field == field
    assert path in problem.message
    assert "surrogate" in problem.message and "re-export" in problem.message


@pytest.mark.parametrize(
    ("char", "name"), [("\x00", "NUL"), ("\x07", "BEL"), ("\x1b", "ESCAPE"), ("\x0c", "FORM FEED")]
)
def test_c0_controls_are_problems(tmp_path: Path, char: str, name: str) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", [alpaca(output=f"答{char}案")])
    (problem,) = read(data)
    assert isinstance(problem, RecordProblem)
    assert (problem.field, problem.line, problem.index) == ("output", 1, 0)
    assert f"U+{ord(char):04X} ({name}" in problem.message and "delete it" in problem.message


def test_tab_newline_and_cr_are_fine_and_crlf_becomes_lf(tmp_path: Path) -> None:
    rows = [
        alpaca(instruction="a\tb\r\nc", output="x\ry", thinking="<thinking>r1\r\nr2</thinking>"),
        openai(question="q\r\nq2", answer="a\r\na2"),
        sharegpt(answer="s\r\ns2"),
    ]
    first, second, third = read(write_jsonl(tmp_path / "ok.jsonl", rows))
    assert isinstance(first, Record) and isinstance(second, Record) and isinstance(third, Record)
    assert first.instruction == "a\tb\nc" and first.output == "x\ry" and first.reasoning == "r1\nr2"
    assert (second.instruction, second.output) == ("q\nq2", "a\na2")
    assert third.output == "s\ns2"


def test_every_bad_field_is_reported_and_other_problems_too(tmp_path: Path) -> None:
    row = {"instruction": f"q{SURROGATE}", "output": "a\x00", "difficulty": "hard"}
    problems = read(write_jsonl(tmp_path / "many.jsonl", [row]))
    assert [p.field for p in problems if isinstance(p, RecordProblem)] == [
        "instruction",
        "output",
        "difficulty",
    ]


def test_a_bad_key_is_named_escaped(tmp_path: Path) -> None:
    (problem,) = read(write_jsonl(tmp_path / "k.jsonl", [{**alpaca(), f"k{SURROGATE}": 1}]))
    assert isinstance(problem, RecordProblem)
    assert problem.field == "k\\ud800"
    problem.message.encode("utf-8")  # the message itself is encodable


def test_json_array_records_name_their_own_line(tmp_path: Path) -> None:
    data = tmp_path / "array.json"
    data.write_text(
        "[\n" + json.dumps(alpaca()) + ",\n" + json.dumps(alpaca(input=f"{SURROGATE}")) + "\n]\n",
        encoding="utf-8",
    )
    problem = next(item for item in read(data) if isinstance(item, RecordProblem))
    assert (problem.line, problem.index, problem.field) == (3, 1, "input")


def test_training_refuses_with_file_line_and_field(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [alpaca(), alpaca(instruction=f"q{SURROGATE}")])
    with pytest.raises(CryptotuneError) as caught:
        read_records(data, display_name="train.jsonl")
    assert caught.value.code is ErrorCode.DATA_INVALID
    message = caught.value.message
    assert "train.jsonl" in message and "2" in message and "instruction" in message
    message.encode("utf-8")


def test_inspection_reports_the_record_and_inspects_the_rest(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    rows = [alpaca(), alpaca(instruction=f"q{SURROGATE}"), alpaca(instruction="第三", output="x\x00")]
    data = write_jsonl(tmp_path / "inspect.jsonl", rows)
    report = inspect_data(data, display_name=data.name, tokenizer=qwen3_tokenizer, max_seq_length=256)
    assert (report.records_total, report.records_valid, report.records_invalid) == (3, 1, 2)
    assert [(e.line, e.index, e.field) for e in report.errors] == [(2, 1, "instruction"), (3, 2, "output")]
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")  # no surrogate reaches the report


def test_scan_text_cleans_everything_it_reports() -> None:
    cleaned, problems = scan_text({"a": [f"x{SURROGATE}", {"b\x00": "c\r\nd"}], "z": 1})
    assert [p.field for p in problems] == ["a"]
    assert "1 more place in 'a'" in problems[0].message
    assert not has_bad_text(json.dumps(cleaned, ensure_ascii=False))
    assert cleaned["a"][1] == {"b\ufffd": "c\nd"}
