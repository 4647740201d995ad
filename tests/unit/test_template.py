"""Rendering is byte-identical to the official Qwen3-4B-Thinking-2507 chat template.

The packaged ``cryptotune_daemon/data/qwen3_thinking_2507_chat_template.jinja`` is the
``chat_template`` of the Qwen3-*-Thinking-2507 tokenizers (Qwen/Qwen3-4B-Thinking-2507's
``tokenizer_config.json``), as carried verbatim by unsloth's ``chat_templates.py``
("qwen3-thinking", mapped there to Qwen/Qwen3-4B-Thinking-2507); its generation prompt is
``<|im_start|>assistant\\n<think>\\n``. It is rendered here the way transformers renders chat templates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

import cryptotune_daemon.data
from cryptotune_daemon.data.readers import RawRecord, convert_record
from cryptotune_daemon.data.records import Record
from cryptotune_daemon.data.template import extract_reasoning, render_prompt, render_record, user_content

TEMPLATE_PATH = Path(cryptotune_daemon.data.__file__).parent / "qwen3_thinking_2507_chat_template.jinja"


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=False)


def official(messages: list[dict[str, Any]], *, add_generation_prompt: bool = False) -> str:
    """Renders like transformers' ``apply_chat_template(..., tokenize=False)``."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    template = env.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None)


def record_from(value: dict[str, Any]) -> Record:
    item = convert_record(RawRecord(index=0, line=1, value=value))
    assert isinstance(item, Record), item
    return item


CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "with thinking": (
        {
            "instruction": "什么是AES？",
            "output": "AES是对称分组密码。",
            "thinking": "<thinking>\n用户问AES。\n</thinking>",
        },
        [
            {"role": "user", "content": "什么是AES？"},
            {"role": "assistant", "content": "AES是对称分组密码。", "reasoning_content": "\n用户问AES。\n"},
        ],
    ),
    "without thinking": (
        {"instruction": "What is a nonce?", "output": "A number used once."},
        [
            {"role": "user", "content": "What is a nonce?"},
            {"role": "assistant", "content": "A number used once."},
        ],
    ),
    "with input": (
        {
            "instruction": "解密下面的凯撒密文（偏移3）",
            "input": "Khoor",
            "output": "Hello",
            "thinking": "<thinking>每个字母左移3位。</thinking>",
        },
        [
            {"role": "user", "content": "解密下面的凯撒密文（偏移3）\nKhoor"},
            {"role": "assistant", "content": "Hello", "reasoning_content": "每个字母左移3位。"},
        ],
    ),
    "chinese and newlines": (
        {
            "instruction": "比较RSA与ECC。\n请分点回答。",
            "output": "1. ECC密钥更短。\n\n2. RSA基于因数分解。\n```\nkey = 256\n```",
            "thinking": (
                "<thinking>\n首先，RSA依赖大整数分解。\n\n"
                "其次，ECC依赖椭圆曲线离散对数。\n  缩进行\n</thinking>"
            ),
            "crypto_terms": ["RSA", "ECC"],
            "difficulty": "ADVANCED",
        },
        [
            {"role": "user", "content": "比较RSA与ECC。\n请分点回答。"},
            {
                "role": "assistant",
                "content": "1. ECC密钥更短。\n\n2. RSA基于因数分解。\n```\nkey = 256\n```",
                "reasoning_content": (
                    "\n首先，RSA依赖大整数分解。\n\n其次，ECC依赖椭圆曲线离散对数。\n  缩进行\n"
                ),
            },
        ],
    ),
    "reasoning with leading and trailing newlines": (
        {
            "instruction": "HMAC有什么用？",
            "output": "\n\n用于消息认证。\n",
            "thinking": "<thinking>\n\n\n  需要密钥。\n\n\n</thinking>",
        },
        [
            {"role": "user", "content": "HMAC有什么用？"},
            {
                "role": "assistant",
                "content": "\n\n用于消息认证。\n",
                "reasoning_content": "\n\n\n  需要密钥。\n\n\n",
            },
        ],
    ),
    "sharegpt think tags in the reply": (
        {
            "conversations": [
                {"from": "human", "value": "SM4的分组长度？"},
                {"from": "gpt", "value": "<think>\n\n国密分组密码。\n</think>\n\n\n128位。"},
            ]
        },
        [
            {"role": "user", "content": "SM4的分组长度？"},
            {"role": "assistant", "content": "<think>\n\n国密分组密码。\n</think>\n\n\n128位。"},
        ],
    ),
    "openai reasoning_content": (
        {
            "messages": [
                {"role": "user", "content": "一次一密为何安全？"},
                {"role": "assistant", "content": "密钥随机且只用一次。", "reasoning_content": "\n香农证明。"},
            ]
        },
        [
            {"role": "user", "content": "一次一密为何安全？"},
            {"role": "assistant", "content": "密钥随机且只用一次。", "reasoning_content": "\n香农证明。"},
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_render_matches_official_template(case: str) -> None:
    value, messages = CASES[case]
    rendered = render_record(record_from(value))
    assert rendered.text == official(messages)


@pytest.mark.parametrize("case", list(CASES))
def test_prompt_is_the_official_generation_prompt(case: str) -> None:
    value, messages = CASES[case]
    rendered = render_record(record_from(value))
    assert rendered.prompt == official(messages[:1], add_generation_prompt=True)
    assert rendered.prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert rendered.trained.endswith("<|im_end|>")
    assert rendered.suffix == "\n"


def test_render_prompt_matches_user_content() -> None:
    assert user_content("问", "") == "问"
    assert user_content("问", "材料") == "问\n材料"
    assert render_prompt("问", "材料") == official(
        [{"role": "user", "content": "问\n材料"}], add_generation_prompt=True
    )


def test_extract_reasoning() -> None:
    assert extract_reasoning(None) == ""
    assert extract_reasoning("") == ""
    assert extract_reasoning("<thinking>\n a \n</thinking>") == " a "
    assert extract_reasoning("  <think>\nb\n</think>\n") == "b"
    assert extract_reasoning("\nplain\n") == "plain"
    # Mismatched wrappers are not unwrapped.
    assert extract_reasoning("<thinking>c</think>") == "<thinking>c</think>"


@pytest.mark.parametrize("case", list(CASES))
def test_trained_tokens_decode_to_exactly_trained(case: str, qwen3_tokenizer: Any) -> None:
    from cryptotune_daemon.data.tokenizer import IGNORE_INDEX, tokenize_sample

    record = record_from(CASES[case][0])
    rendered = render_record(record)
    sample = tokenize_sample(qwen3_tokenizer, rendered, record)
    trained_ids = sample.input_ids[sample.prompt_tokens :]
    assert qwen3_tokenizer.decode(trained_ids, skip_special_tokens=False) == rendered.trained
    assert qwen3_tokenizer.decode(sample.input_ids[: sample.prompt_tokens], skip_special_tokens=False) == (
        rendered.prompt
    )
    assert sample.labels[: sample.prompt_tokens] == [IGNORE_INDEX] * sample.prompt_tokens
    assert sample.labels[sample.prompt_tokens :] == trained_ids


def test_built_tokenizer_carries_the_template(qwen3_tokenizer: Any) -> None:
    record = Record(
        index=0,
        line=1,
        instruction="SM4 的分组长度是多少？",
        input="",
        output="128 位。",
        reasoning="SM4 是分组密码。",
        has_thinking=True,
    )
    messages = [
        {"role": "user", "content": record.instruction},
        {"role": "assistant", "content": record.output, "reasoning_content": record.reasoning},
    ]
    rendered = qwen3_tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == render_record(record).text
    prompt = qwen3_tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == render_record(record).prompt
