"""Reading data files: formats, streaming, line numbers and every class of data error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptotune_daemon.data.readers import (
    RawRecord,
    convert_record,
    detect_file_format,
    detect_source_format,
    iter_raw_records,
    iter_records,
)
from cryptotune_daemon.data.readers import decoding as stream_decoding
from cryptotune_daemon.data.records import Record, RecordProblem
from cryptotune_daemon.data.text_checks import scan_text
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return path


def read(path: Path, **kwargs: object) -> list[Record | RecordProblem]:
    return list(iter_records(path, display_name=path.name, **kwargs))  # type: ignore[arg-type]


def problems(items: list[Record | RecordProblem]) -> list[RecordProblem]:
    return [item for item in items if isinstance(item, RecordProblem)]


def records(items: list[Record | RecordProblem]) -> list[Record]:
    return [item for item in items if isinstance(item, Record)]


def whole_file_error(path: Path, **kwargs: object) -> CryptotuneError:
    with pytest.raises(CryptotuneError) as caught:
        read(path, **kwargs)
    assert caught.value.code is ErrorCode.DATA_INVALID
    assert path.name in caught.value.message
    return caught.value


def only_problem(content: object, tmp_path: Path, **kwargs: object) -> RecordProblem:
    path = write(tmp_path, "one.jsonl", json.dumps(content, ensure_ascii=False) + "\n")
    items = read(path, **kwargs)
    assert len(items) == 1
    assert isinstance(items[0], RecordProblem), items[0]
    return items[0]


def only_record(content: object, tmp_path: Path, **kwargs: object) -> Record:
    path = write(tmp_path, "one.jsonl", json.dumps(content, ensure_ascii=False) + "\n")
    items = read(path, **kwargs)
    assert len(items) == 1
    assert isinstance(items[0], Record), items[0]
    return items[0]


# ---------------------------------------------------------------------------------------------
# Native / alpaca records


def test_native_record_fields(tmp_path: Path) -> None:
    record = only_record(
        {
            "instruction": "什么是AES？",
            "input": "简要回答",
            "output": "AES是一种对称分组密码。",
            "thinking": "<thinking>\n用户问AES。\n</thinking>",
            "crypto_terms": ["AES", " 分组密码 ", "AES", ""],
            "difficulty": 2,
        },
        tmp_path,
    )
    assert record.instruction == "什么是AES？"
    assert record.input == "简要回答"
    assert record.output == "AES是一种对称分组密码。"
    assert record.reasoning == "用户问AES。"
    assert record.has_thinking
    assert record.crypto_terms == ("AES", "分组密码")
    assert record.difficulty == 2
    assert (record.index, record.line) == (0, 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (4, 4),
        ("2", 2),
        (" 3 ", 3),
        (3.0, 3),
        ("BEGINNER", 1),
        ("expert", 4),
        ("Intermediate", 2),
        ("高级", 3),
        (None, None),
        ("", None),
    ],
)
def test_difficulty_accepted_forms(tmp_path: Path, value: object, expected: int | None) -> None:
    record = only_record({"instruction": "q", "output": "a", "difficulty": value}, tmp_path)
    assert record.difficulty == expected


@pytest.mark.parametrize(
    ("value", "shown"), [(7, "7"), (0, "0"), ("hard", '"hard"'), (2.5, "2.5"), (True, "true"), ([1], "[1]")]
)
def test_bad_difficulty_is_a_problem(tmp_path: Path, value: object, shown: str) -> None:
    problem = only_problem({"instruction": "q", "output": "a", "difficulty": value}, tmp_path)
    assert problem.field == "difficulty"
    assert problem.message == (
        f"'difficulty' must be an integer 1–4 (or BEGINNER, INTERMEDIATE, ADVANCED, EXPERT), got {shown}"
    )


@pytest.mark.parametrize(
    ("content", "field", "fragment"),
    [
        ({"output": "a"}, "instruction", "missing required field 'instruction'"),
        ({"instruction": "q"}, "output", "missing required field 'output'"),
        ({"instruction": "q", "output": None}, "output", "missing required field 'output'"),
        ({"instruction": "  \n", "output": "a"}, "instruction", "'instruction' is empty"),
        ({"instruction": "q", "output": " \t\n"}, "output", "'output' is empty"),
        ({"instruction": 5, "output": "a"}, "instruction", "'instruction' must be a string, got a number"),
        (
            {"instruction": "q", "input": ["x"], "output": "a"},
            "input",
            "'input' must be a string, got an array",
        ),
        ({"instruction": "q", "output": {"a": 1}}, "output", "'output' must be a string, got an object"),
        ({"instruction": "q", "output": "a", "thinking": 1}, "thinking", "'thinking' must be a string"),
        (
            {"instruction": "q", "output": "a", "crypto_terms": "AES"},
            "crypto_terms",
            "must be a list of strings",
        ),
        (
            {"instruction": "q", "output": "a", "crypto_terms": ["AES", 3]},
            "crypto_terms",
            "'crypto_terms[1]'",
        ),
        ({"question": "q", "answer": "a"}, "instruction", "the record's keys: answer, question"),
    ],
)
def test_field_problems(tmp_path: Path, content: dict[str, object], field: str, fragment: str) -> None:
    problem = only_problem(content, tmp_path)
    assert problem.field == field
    assert fragment in problem.message


def test_alpaca_system_and_history_are_reported(tmp_path: Path) -> None:
    system = only_problem({"instruction": "q", "output": "a", "system": "你是密码学专家"}, tmp_path)
    assert system.field == "system"
    assert "renders no system turn" in system.message
    history = only_problem({"instruction": "q", "output": "a", "history": [["hi", "hello"]]}, tmp_path)
    assert history.field == "history"
    assert "multi-turn history is not supported; flatten it into instruction/input" in history.message
    # Empty values are what LLaMA-Factory writes for "none": they are fine.
    assert only_record({"instruction": "q", "output": "a", "system": "", "history": []}, tmp_path)


def test_thinking_wrappers(tmp_path: Path) -> None:
    think = only_record(
        {"instruction": "q", "output": "a", "thinking": "<think>\n\n推理\n</think>\n"}, tmp_path
    )
    assert (think.reasoning, think.has_thinking) == ("推理", True)
    bare = only_record({"instruction": "q", "output": "a", "thinking": "\n直接推理\n"}, tmp_path)
    assert bare.reasoning == "直接推理"
    empty = only_record({"instruction": "q", "output": "a", "thinking": "<thinking></thinking>"}, tmp_path)
    assert (empty.reasoning, empty.has_thinking) == ("", False)
    unclosed = only_problem({"instruction": "q", "output": "a", "thinking": "<thinking>推理"}, tmp_path)
    assert unclosed.field == "thinking"
    assert "never closes" in unclosed.message


def test_control_tokens_in_text_are_reported(tmp_path: Path) -> None:
    problem = only_problem({"instruction": "q", "output": "答案<|im_end|>"}, tmp_path)
    assert problem.field == "output"
    assert "'<|im_end|>'" in problem.message
    inner = only_problem(
        {"instruction": "q", "output": "a", "thinking": "<thinking>x</think>y</thinking>"}, tmp_path
    )
    assert inner.field == "thinking"
    assert "'</think>'" in inner.message


def test_unknown_keys_are_kept_as_extra(tmp_path: Path) -> None:
    record = only_record({"instruction": "q", "output": "a", "id": 7, "source": "web"}, tmp_path)
    assert record.extra == {"id": 7, "source": "web"}


def all_problems(content: object, tmp_path: Path, *, line: int = 1, index: int = 0) -> list[RecordProblem]:
    """The problems of one bad record, after checking they all name its line and index."""
    path = write(tmp_path, "one.jsonl", "\n" * (line - 1) + json.dumps(content, ensure_ascii=False) + "\n")
    items = read(path)
    found = problems(items)
    assert found == items, items
    assert {(p.line, p.index) for p in found} == {(line, index)}
    return found


def test_every_bad_field_of_a_record_is_reported(tmp_path: Path) -> None:
    found = all_problems({"instruction": 5, "output": "x", "difficulty": "hard"}, tmp_path, line=3)
    assert [(p.field, p.message) for p in found] == [
        ("instruction", "'instruction' must be a string, got a number"),
        (
            "difficulty",
            "'difficulty' must be an integer 1–4 (or BEGINNER, INTERMEDIATE, ADVANCED, EXPERT), got \"hard\"",
        ),
    ]


def test_all_alpaca_field_problems_come_in_field_order(tmp_path: Path) -> None:
    content = {
        "images": ["a.png"],
        "instruction": "  ",
        "input": ["x"],
        "output": "答案<|im_end|>",
        "thinking": "<thinking>推理",
        "crypto_terms": ["AES", 3, 4],
        "difficulty": 9,
        "system": "你是专家",
        "history": [["hi", "hello"]],
    }
    found = all_problems(content, tmp_path)
    assert [p.field for p in found] == [
        "images",
        "instruction",
        "input",
        "output",
        "thinking",
        "crypto_terms",
        "difficulty",
        "system",
        "history",
    ]
    messages = [p.message for p in found]
    assert "text-only" in messages[0]
    assert "'instruction' is empty" in messages[1]
    assert "'input' must be a string, got an array" in messages[2]
    assert "'<|im_end|>'" in messages[3]
    assert "never closes" in messages[4]
    # One problem per field: the first bad element of crypto_terms.
    assert messages[5] == "'crypto_terms[1]' must be a string, got a number"
    assert messages[6].endswith("got 9")
    assert "renders no system turn" in messages[7]
    assert "multi-turn history is not supported" in messages[8]


def test_a_record_that_is_not_an_object_has_one_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.jsonl", '{"instruction": "q", "output": "a"}\n[1, "x"]\n')
    found = problems(read(path))
    assert [(p.line, p.index, p.field) for p in found] == [(2, 1, "")]
    assert found[0].message.startswith("the record is an array; expected an object")


def test_problems_in_a_json_array_name_the_element_line(tmp_path: Path) -> None:
    content = (
        '[\n  {"instruction": "q", "output": "a"},\n  {\n    "instruction": null,\n    "output": 1\n  }\n]'
    )
    found = problems(read(write(tmp_path, "rows.json", content)))
    assert [(p.line, p.index, p.field) for p in found] == [(3, 1, "instruction"), (3, 1, "output")]
    assert "missing required field 'instruction'" in found[0].message
    assert found[1].message == "'output' must be a string, got a number"


def test_several_bad_records_each_report_all_their_fields(tmp_path: Path) -> None:
    lines = [
        json.dumps({"instruction": 1, "output": 2}),
        json.dumps({"instruction": "q", "output": "a"}),
        json.dumps({"instruction": "q", "output": "a", "crypto_terms": "AES", "difficulty": 0}),
    ]
    items = read(write(tmp_path, "rows.jsonl", "\n".join(lines) + "\n"))
    assert [
        (item.line, item.index, item.field) if isinstance(item, RecordProblem) else "record" for item in items
    ] == [(1, 0, "instruction"), (1, 0, "output"), "record", (3, 2, "crypto_terms"), (3, 2, "difficulty")]


# ---------------------------------------------------------------------------------------------
# sharegpt / openai records


def test_sharegpt_single_turn_with_think(tmp_path: Path) -> None:
    record = only_record(
        {
            "conversations": [
                {"from": "human", "value": "RSA的安全性基于什么？"},
                {"from": "gpt", "value": "<think>\n考虑大整数分解。\n</think>\n\n基于大整数分解的困难性。"},
            ],
            "tools": "[]",
            "system": "",
        },
        tmp_path,
    )
    assert record.instruction == "RSA的安全性基于什么？"
    assert record.input == ""
    assert record.reasoning == "考虑大整数分解。"
    assert record.has_thinking
    assert record.output == "基于大整数分解的困难性。"
    assert record.extra == {}


def test_sharegpt_without_think(tmp_path: Path) -> None:
    record = only_record(
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, tmp_path
    )
    assert (record.reasoning, record.has_thinking, record.output) == ("", False, "a")


def _turns(*roles: str) -> list[dict[str, str]]:
    return [{"from": role, "value": f"{role} {number}"} for number, role in enumerate(roles, start=1)]


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        (
            {"conversations": _turns("human", "function_call", "observation", "gpt")},
            "conversations",
            "turn 2 has role 'function_call': tool calls are not supported; keep only records made of one "
            "'human' turn and one 'gpt' turn",
        ),
        (
            {"conversations": _turns("human", "gpt", "observation", "gpt")},
            "conversations",
            "turn 3 has role 'observation': tool calls are not supported; keep only records made of one "
            "'human' turn and one 'gpt' turn",
        ),
        (
            {"conversations": _turns("human", "gpt", "human", "gpt")},
            "conversations",
            "the record has 4 turns (2 questions): multi-turn conversations are not supported; split it into "
            "records of one 'human' turn and one 'gpt' turn",
        ),
        (
            {"conversations": _turns("human", "gpt"), "tools": '[{"name": "f"}]'},
            "tools",
            "tool definitions are not supported: the trainer renders no tool system prompt; remove 'tools'",
        ),
        ({"conversations": _turns("gpt", "human")}, "conversations", "turn 1 has role 'gpt'"),
        ({"conversations": _turns("human")}, "conversations", "only a 'human' turn"),
        ({"conversations": []}, "conversations", "the record has no turns"),
        ({"conversations": "hi"}, "conversations", "must be a list of {from, value} turns, got a string"),
        ({"conversations": _turns("human", "wizard")}, "conversations", "turn 2 has unknown role 'wizard'"),
        ({"conversations": _turns("system", "human", "gpt")}, "system", "a system turn is not supported"),
        (
            {"conversations": [{"from": "human", "value": 1}, {"from": "gpt", "value": "a"}]},
            "conversations",
            "string content",
        ),
        ({"conversations": _turns("human", "gpt"), "images": ["a.png"]}, "images", "text-only"),
    ],
)
def test_sharegpt_unsupported_records(
    tmp_path: Path, content: dict[str, object], field: str, message: str
) -> None:
    problem = only_problem(content, tmp_path)
    assert problem.field == field
    assert message in problem.message


def test_sharegpt_tool_call_records_are_reported_one_by_one(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {"conversations": _turns("human", "function_call", "observation", "gpt"), "tools": "[{}]"}
        ),
        json.dumps({"conversations": _turns("human", "gpt")}),
        json.dumps({"conversations": _turns("human", "gpt", "human", "function_call", "observation", "gpt")}),
    ]
    items = read(write(tmp_path, "tools.jsonl", "\n".join(lines) + "\n"))
    assert [type(item).__name__ for item in items] == [
        "RecordProblem",
        "RecordProblem",
        "Record",
        "RecordProblem",
    ]
    first, first_tools, third = problems(items)
    assert (first.line, first.index, first.field) == (1, 0, "conversations")
    assert first.message.startswith("turn 2 has role 'function_call'")
    # 'tools' is a field of its own: its problem is reported beside the conversation's.
    assert (first_tools.line, first_tools.index, first_tools.field) == (1, 0, "tools")
    assert (third.line, third.index) == (3, 2)
    assert third.message.startswith("turn 4 has role 'function_call'")


def test_openai_messages_with_reasoning_content(tmp_path: Path) -> None:
    record = only_record(
        {
            "messages": [
                {"role": "system", "content": ""},
                {"role": "user", "content": "SHA-256输出多长？"},
                {"role": "assistant", "content": "256位。", "reasoning_content": "\n回忆SHA-2家族。\n"},
            ]
        },
        tmp_path,
    )
    assert (record.instruction, record.output) == ("SHA-256输出多长？", "256位。")
    assert (record.reasoning, record.has_thinking) == ("回忆SHA-2家族。", True)


def test_openai_think_in_content_and_text_parts(tmp_path: Path) -> None:
    record = only_record(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "什么是"}, {"type": "text", "text": "HMAC？"}],
                },
                {"role": "assistant", "content": "<think>想一想</think>带密钥的消息认证码。"},
            ]
        },
        tmp_path,
    )
    assert record.instruction == "什么是HMAC？"
    assert (record.reasoning, record.output) == ("想一想", "带密钥的消息认证码。")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [{}]}],
            "message 2 has tool_calls: tool calls are not supported",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "tool", "content": "r"},
                {"role": "assistant", "content": "a"},
            ],
            "message 2 has role 'tool': tool calls are not supported",
        ),
        (
            [
                {"role": "system", "content": "你是助手"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ],
            "a system message is not supported",
        ),
        ([{"role": "user", "content": "q"}], "the record has only a 'user' message"),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}],
            "the answer is empty",
        ),
        (
            [
                {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                {"role": "assistant", "content": "a"},
            ],
            "content part of type 'image_url'",
        ),
    ],
)
def test_openai_unsupported_records(tmp_path: Path, messages: list[dict[str, object]], message: str) -> None:
    problem = only_problem({"messages": messages}, tmp_path)
    assert message in problem.message


def test_sharegpt_reports_every_field_but_one_problem_for_a_malformed_conversation(tmp_path: Path) -> None:
    content = {
        "conversations": _turns("human", "wizard", "gpt", "human"),
        "tools": '[{"name": "f"}]',
        "system": "你是助手",
        "videos": ["v.mp4"],
    }
    found = all_problems(content, tmp_path)
    assert [p.field for p in found] == ["videos", "conversations", "tools", "system"]
    assert found[1].message.startswith("turn 2 has unknown role 'wizard'")
    assert "tool definitions are not supported" in found[2].message
    assert "'system' is not supported" in found[3].message


def test_sharegpt_question_and_answer_are_checked_independently(tmp_path: Path) -> None:
    content = {
        "conversations": [
            {"from": "system", "value": "你是助手"},
            {"from": "human", "value": " "},
            {"from": "gpt", "value": "<think>推理"},
        ]
    }
    found = all_problems(content, tmp_path)
    assert [(p.field, p.message) for p in found] == [
        (
            "system",
            "a system turn is not supported: the trainer renders no system turn, so the model would "
            "be trained without it; remove it or move its text into the question",
        ),
        ("conversations", "the question is empty; give it a non-empty text or remove the record"),
        ("conversations", "the answer opens <think> but never closes it; add </think> after the reasoning"),
    ]


def test_openai_reports_every_field(tmp_path: Path) -> None:
    content = {
        "messages": [
            {"role": "user", "content": "问题<|im_start|>"},
            {"role": "assistant", "content": "", "reasoning_content": 3},
        ],
        "tools": [{"type": "function"}],
    }
    found = all_problems(content, tmp_path)
    assert [(p.field, p.message) for p in found] == [
        ("messages", "message 2: 'reasoning_content' must be a string, got a number"),
        (
            "messages",
            "the question contains '<|im_start|>', which the tokenizer reads as a Qwen3 control token "
            "and would break the chat structure; remove it",
        ),
        ("messages", "the answer is empty; give it a non-empty text or remove the record"),
        (
            "tools",
            "tool definitions are not supported: the trainer renders no tool system prompt; remove 'tools'",
        ),
    ]


def test_detect_source_format() -> None:
    assert detect_source_format({"instruction": "q", "output": "a"}) == "alpaca"
    assert detect_source_format({"instruction": "q", "output": "a", "difficulty": 1}) == "native"
    assert detect_source_format({"conversations": []}) == "sharegpt"
    assert detect_source_format({"messages": []}) == "openai"
    assert detect_source_format({"question": "q"}) is None


def test_forced_data_format_reports_other_shapes(tmp_path: Path) -> None:
    lines = [
        json.dumps({"instruction": "q", "output": "a"}),
        json.dumps({"conversations": _turns("human", "gpt")}),
    ]
    path = write(tmp_path, "mixed.jsonl", "\n".join(lines))
    items = read(path, data_format="alpaca")
    assert isinstance(items[0], Record)
    assert isinstance(items[1], RecordProblem)
    assert "in sharegpt format but the data format is set to 'alpaca'" in items[1].message
    items = read(path, data_format="sharegpt")
    assert isinstance(items[0], RecordProblem)
    assert isinstance(items[1], Record)
    assert len(records(read(path, data_format="native"))) == 1


def test_bad_format_names_are_request_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", '{"instruction": "q", "output": "a"}\n')
    for kwargs in ({"file_format": "csv"}, {"data_format": "yaml"}):
        with pytest.raises(CryptotuneError) as caught:
            read(path, **kwargs)
        assert caught.value.code is ErrorCode.REQUEST_INVALID


# ---------------------------------------------------------------------------------------------
# Files, streaming and line numbers


def test_jsonl_bad_line_is_a_record_problem_and_reading_continues(tmp_path: Path) -> None:
    content = (
        '{"instruction": "q1", "output": "a1"}\n'
        "\n"
        '{"instruction": "q2", "output": \n'
        "   \n"
        '{"instruction": "q3", "output": "a3"}\n'
        "[1, 2]\n"
        '{"instruction": "q4", "output": "a4"} {"x": 1}\n'
        '{"instruction": "q5", "output": "a5"}'
    )
    items = read(write(tmp_path, "data.jsonl", content))
    assert [(item.index, item.line) for item in items] == [(0, 1), (1, 3), (2, 5), (3, 6), (4, 7), (5, 8)]
    bad = problems(items)
    assert [(p.line, p.index, p.field) for p in bad] == [(3, 1, ""), (6, 3, ""), (7, 4, "")]
    assert bad[0].message.startswith("the line is not valid JSON (column 33: Expecting value)")
    assert "exactly one JSON object" in bad[0].message
    assert bad[1].message.startswith("the record is an array; expected an object")
    assert "Extra data" in bad[2].message
    assert [r.instruction for r in records(items)] == ["q1", "q3", "q5"]


def test_json_array_problems_name_the_element_start_line(tmp_path: Path) -> None:
    content = """[
  {
    "instruction": "q0",
    "output": "a0"
  },
  {
    "instruction": "q1",
    "output": "",
    "difficulty": 2
  },

  "just a string",
  {"instruction": "q3", "output": "a3", "difficulty": 7}, {"output": "a4"},
  {
    "instruction": "q5",
    "output": "a5",
    "crypto_terms": "AES"
  }
]
"""
    items = read(write(tmp_path, "data.json", content))
    assert [(item.index, item.line) for item in items] == [(0, 2), (1, 6), (2, 12), (3, 13), (4, 13), (5, 14)]
    assert [(p.line, p.index, p.field) for p in problems(items)] == [
        (6, 1, "output"),
        (12, 2, ""),
        (13, 3, "difficulty"),
        (13, 4, "instruction"),
        (14, 5, "crypto_terms"),
    ]
    assert "'difficulty' must be an integer 1–4" in problems(items)[2].message
    assert "got 7" in problems(items)[2].message


def test_bom_and_crlf_read_fine_with_correct_lines(tmp_path: Path) -> None:
    jsonl = (
        '\ufeff{"instruction": "第一", "output": "一"}\r\n'
        "\r\n"
        '{"instruction": "第二", "input": "多行\\r\\n输入", "output": "二"}\r\n'
        '{"instruction": "第三", "output": 3}\r\n'
    )
    items = read(write(tmp_path, "crlf.jsonl", jsonl))
    assert [(item.index, item.line) for item in items] == [(0, 1), (1, 3), (2, 4)]
    first, second = records(items)
    assert first.instruction == "第一"
    assert second.input == "多行\n输入"  # a CRLF inside a string is normalised to LF
    assert problems(items)[0].field == "output"

    array = (
        '\ufeff[\r\n  {"instruction": "第一",\r\n   "output": "一"},\r\n'
        '\r\n  {"instruction": "第二", "output": "二"}\r\n]\r\n'
    )
    path = write(tmp_path, "crlf.json", array)
    assert detect_file_format(path, display_name="crlf.json") == "json"
    items = read(path)
    assert [(item.index, item.line) for item in items] == [(0, 2), (1, 5)]
    assert [r.output for r in records(items)] == ["一", "二"]


def test_single_pretty_printed_object_is_one_record(tmp_path: Path) -> None:
    path = write(tmp_path, "one.json", '\n{\n  "instruction": "q",\n  "output": "a"\n}\n')
    assert detect_file_format(path, display_name="one.json") == "json"
    items = read(path)
    assert len(items) == 1
    assert isinstance(items[0], Record)
    assert items[0].line == 2


def test_detect_file_format(tmp_path: Path) -> None:
    assert detect_file_format(write(tmp_path, "a", '  \n[{"instruction": "q"}]'), display_name="a") == "json"
    assert detect_file_format(write(tmp_path, "b", '{"instruction": "q"}\n{}'), display_name="b") == "jsonl"
    assert detect_file_format(write(tmp_path, "c", '{"instruction": \n'), display_name="c") == "jsonl"
    assert detect_file_format(write(tmp_path, "d", "[]"), display_name="d", file_format="jsonl") == "jsonl"


def test_forced_file_formats(tmp_path: Path) -> None:
    jsonl = write(
        tmp_path, "records.txt", '{"instruction": "q", "output": "a"}\n{"instruction": "q", "output": "b"}\n'
    )
    assert len(records(read(jsonl, file_format="jsonl"))) == 2
    error = whole_file_error(jsonl, file_format="json")
    assert "unexpected data at line 2" in error.message
    array = write(tmp_path, "array.txt", '[{"instruction": "q", "output": "a"}]')
    assert "line 1" in whole_file_error(array, file_format="jsonl").message


@pytest.mark.parametrize(("chunk", "suffix"), [(7, "json"), (7, "jsonl"), (64, "json"), (3, "jsonl")])
def test_streaming_across_chunk_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, suffix: str
) -> None:
    rows = [
        {
            "instruction": f"问题{i}：什么是椭圆曲线？" * (1 + i % 3),
            "output": "答" * (i * 7 % 50 + 1),
            "difficulty": 1 + i % 4,
        }
        for i in range(40)
    ]
    if suffix == "json":
        content = json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    else:
        content = "\r\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    path = write(tmp_path, f"rows.{suffix}", "\ufeff" + content)
    expected = read(path)
    monkeypatch.setattr(stream_decoding, "_CHUNK_BYTES", chunk)
    assert read(path) == expected
    assert [r.instruction for r in records(expected)] == [row["instruction"] for row in rows]
    assert len({item.line for item in expected}) == 40


@pytest.mark.parametrize("chunk", range(1, 14))
def test_literals_and_numbers_split_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    content = (
        '[{"instruction":"q","output":"a","difficulty":null,"ok":true,"no":false,"x":-1.5e+3}, 12, null]'
    )
    path = write(tmp_path, "literals.json", "\ufeff" + content)
    expected = list(iter_raw_records(path, display_name="literals.json"))
    assert [raw.value for raw in expected][1:] == [12, None]
    monkeypatch.setattr(stream_decoding, "_CHUNK_BYTES", chunk)
    assert list(iter_raw_records(path, display_name="literals.json")) == expected


def test_large_array_streams_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    # Memory is bounded by the chunk size, not the file size: shrink the chunk to show it on a small file.
    monkeypatch.setattr(stream_decoding, "_CHUNK_BYTES", 1 << 16)
    row = json.dumps(
        {"instruction": "什么是分组密码的工作模式？", "output": "CBC、CTR、GCM等。" * 10}, ensure_ascii=False
    )
    path = tmp_path / "big.json"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[\n" + ",\n".join([row] * 20000) + "\n]\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = 0
        last_line = 0
        for raw in iter_raw_records(path, display_name="big.json"):
            count += 1
            last_line = raw.line
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, last_line) == (20000, 20001)
    assert peak < size / 8, (peak, size)


# ---------------------------------------------------------------------------------------------
# Whole-file errors


def test_non_utf8_file_names_line_and_offset_and_suggests_gbk(tmp_path: Path) -> None:
    good = b'{"instruction": "q", "output": "a"}\n\n'
    gbk = '{"instruction": "什么是密码学？", "output": "研究加密的学科"}\n'.encode("gbk")
    path = write(tmp_path, "gbk.jsonl", good + gbk)
    error = whole_file_error(path)
    # Some GBK byte pairs happen to be valid UTF-8: the first invalid byte is a few bytes in.
    with pytest.raises(UnicodeDecodeError) as decoding:
        (good + gbk).decode("utf-8")
    offset = decoding.value.start
    assert offset > len(good)
    assert f"line 3 (byte offset {offset}) is not valid UTF-8; re-encode the file as UTF-8" in error.message
    assert "GBK/GB18030" in error.message


def test_non_utf8_latin1_has_no_gbk_guess(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.json", b'[\n {"instruction": "caf\xe9", "output": "a"}\n]')
    error = whole_file_error(path)
    assert "line 2 (byte offset 23) is not valid UTF-8" in error.message
    assert "GBK" not in error.message


def test_utf16_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "utf16.json", '[{"instruction": "q", "output": "a"}]'.encode("utf-16"))
    assert "UTF-16" in whole_file_error(path).message


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.jsonl", "", "the file is empty"),
        ("blank.json", " \r\n\n\t", "the file is empty"),
        ("blank-lines.jsonl", "\n\n", "the file is empty"),
        ("text.txt", "instruction,output\nq,a\n", "not JSON or JSON Lines: line 1, column 1"),
        ("number.json", "\n42\n", "the top level (line 2) is a number"),
        ("string.json", '"hello"', "the top level (line 1) is a string"),
        ("null.json", "null", "the top level (line 1) is null"),
        ("empty-array.json", "[ ]", "no records"),
        (
            "trailing-comma.json",
            '[{"instruction": "q", "output": "a"},\n]',
            "trailing comma before ']' at line 2",
        ),
        ("unclosed.json", '[\n{"instruction": "q", "output": "a"}\n', "the JSON array is not closed"),
        ("after.json", '[{"instruction": "q", "output": "a"}]\n\nxyz', "unexpected data at line 3"),
        (
            "broken.json",
            '[\n  {"instruction": "q",\n   "output" "a"}\n]',
            "not valid JSON at line 3, column 13",
        ),
        ("missing-comma.json", '[\n {"instruction": "q", "output": "a"}\n {"x": 1}]', "expected ',' or ']'"),
        (
            "object.json",
            '{\n  "meta": 1,\n  "items": 2\n}',
            "the top-level JSON object (line 1) is not a record",
        ),
        ("wrapped.json", '{"data": [{"instruction": "q", "output": "a"}]}', "under the key 'data'"),
    ],
)
def test_whole_file_errors(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    error = whole_file_error(write(tmp_path, name, content))
    assert fragment in error.message


def test_convert_record_reports_raw_errors() -> None:
    found = convert_record(RawRecord(index=3, line=9, value=None, error="the line is not valid JSON"))
    assert found == [RecordProblem(line=9, index=3, field="", message="the line is not valid JSON")]


# ---------------------------------------------------------------------------------------------
# Third-party files (LLaMA-Factory demo data)


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_file():
        pytest.skip(
            f"third-party dataset {path} is absent (expected beside the repository in shared/datasets)"
        )
    return path


@pytest.mark.parametrize(
    ("name", "count"), [("llamafactory_alpaca_zh_demo.json", 1000), ("llamafactory_identity.json", 91)]
)
def test_llamafactory_alpaca_files_load_fully(name: str, count: int) -> None:
    path = dataset(name)
    items = list(iter_records(path, display_name=name))
    assert problems(items) == []
    valid = records(items)
    assert len(valid) == count
    assert [r.index for r in valid] == list(range(count))
    assert not any(r.has_thinking for r in valid)
    assert all(r.difficulty is None and r.reasoning == "" for r in valid)


def test_llamafactory_sharegpt_toolcall_file_reports_every_record() -> None:
    name = "llamafactory_sharegpt_toolcall_zh_demo.json"
    path = dataset(name)
    items = list(iter_records(path, display_name=name))
    valid = records(items)
    invalid = problems(items)
    invalid_records = {p.index for p in invalid}
    assert len(valid) + len(invalid_records) == 300
    assert sorted([r.index for r in valid] + list(invalid_records)) == list(range(300))
    assert invalid, "the tool-call file must produce problems"
    # A record's problems come in a row, at most one per field, all naming the record's line.
    by_record = [(p.index, p.line, p.field) for p in invalid]
    assert len(set(by_record)) == len(by_record)
    assert len({(index, line) for index, line, _ in by_record}) == len(invalid_records)
    assert [p.index for p in invalid] == sorted(p.index for p in invalid)
    assert all(p.line > 0 and p.message and p.field in ("conversations", "tools") for p in invalid)
    tool_calls = [p for p in invalid if "tool calls are not supported" in p.message]
    assert tool_calls
    assert all(p.message.startswith("turn ") for p in tool_calls)
    assert any("multi-turn conversations are not supported" in p.message for p in invalid)
    # Element starts are strictly increasing lines of a pretty-printed array.
    lines = [item.line for item in items]
    assert lines == sorted(lines) and len(set(lines)) == 300
    assert any(p.field == "tools" for p in invalid)


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_syntax_error_column_on_a_long_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    row = '{"instruction":"q","output":"a"}'
    prefix = "[\n" + ",".join([row] * 50) + ","
    path = write(tmp_path, "minified.json", prefix + '{"instruction" "x"}]')
    column = len(prefix) - 2 + len('{"instruction" ') + 1
    monkeypatch.setattr(stream_decoding, "_CHUNK_BYTES", chunk)
    error = whole_file_error(path)
    assert f"not valid JSON at line 2, column {column}: Expecting ':' delimiter" in error.message


@pytest.mark.parametrize("file_format", ["jsonl", "json"])
def test_records_without_unclean_escapes_are_marked_clean(tmp_path: Path, file_format: str) -> None:
    texts = [
        r'{"instruction": "plain 中文\ttab\nnewline \\ slash \"quote\" \/", "output": "a"}',
        r'{"instruction": "escaped \u00e9 letter", "output": "a"}',
        r'{"instruction": "a carriage return\r\n", "output": "a"}',
        r'{"instruction": "back\bspace", "output": "form\ffeed"}',
        r'{"instruction": "bad \u0001 control", "output": "a"}',
        r'{"instruction": "q", "output": "a", "meta": {"key\u0002": ["\ud800"]}}',
        r'{"instruction": "a backslash then u: \\u", "output": "a"}',
    ]
    body = "\n".join(texts) if file_format == "jsonl" else "[\n" + ",\n".join(texts) + "\n]"
    path = tmp_path / f"records.{file_format}"
    path.write_text(body, encoding="utf-8")
    raws = list(iter_raw_records(path, display_name=path.name, file_format=file_format))
    assert [raw.clean for raw in raws] == [True, False, False, False, False, False, False]
    for raw in raws:
        if raw.clean:
            assert scan_text(raw.value) == (raw.value, [])
        # A clean record converts exactly as its text-checked twin does.
        assert convert_record(raw) == convert_record(RawRecord(raw.index, raw.line, raw.value))
