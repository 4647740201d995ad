"""The offline-built Qwen3 tokenizer, its disk cache, model resolution and sample tokenisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cryptotune_daemon.data.readers import RawRecord, convert_record
from cryptotune_daemon.data.records import Record
from cryptotune_daemon.data.template import render_record
from cryptotune_daemon.data.tokenizer import (
    BUILTIN_TINY_QWEN3,
    IGNORE_INDEX,
    QWEN3_ADDED_TOKENS,
    clear_tokenizer_memo,
    is_qwen3_tokenizer_model,
    load_tokenizer,
    qwen3_tokenizer_dir,
    tokenize_sample,
    tokenize_samples,
)
from cryptotune_daemon.errors import CryptotuneError, ErrorCode


def test_special_token_ids(qwen3_tokenizer: Any) -> None:
    ids = {token: qwen3_tokenizer.convert_tokens_to_ids(token) for token, _ in QWEN3_ADDED_TOKENS}
    assert ids["<think>"] == 151667
    assert ids["</think>"] == 151668
    assert ids["<|im_start|>"] == 151644
    assert ids["<|im_end|>"] == 151645
    assert ids["<|endoftext|>"] == 151643
    assert ids["<tool_call>"] == 151657
    assert ids["<tool_response>"] == 151665
    assert sorted(ids.values()) == list(range(151643, 151669))
    assert len(qwen3_tokenizer) == 151669
    assert (qwen3_tokenizer.eos_token, qwen3_tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (qwen3_tokenizer.pad_token, qwen3_tokenizer.pad_token_id) == ("<|endoftext|>", 151643)


def test_known_qwen_ids(qwen3_tokenizer: Any) -> None:
    encoded = qwen3_tokenizer(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n", add_special_tokens=False
    )
    assert encoded["input_ids"][:3] == [151644, 872, 198]
    assert encoded["input_ids"][-5:] == [151644, 77091, 198, 151667, 271]


def test_chinese_round_trip(qwen3_tokenizer: Any) -> None:
    text = "椭圆曲线密码学（ECC）比RSA更高效。\n  例如：Curve25519、SM2 🔐\r\n\tkey = 0x1F"
    ids = qwen3_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert qwen3_tokenizer.decode(ids) == text
    assert all(0 <= token < 151643 for token in ids)


def test_tool_and_think_tags_survive_skipping_special_tokens(qwen3_tokenizer: Any) -> None:
    ids = qwen3_tokenizer(
        "<think>\nx\n</think>\n\n<tool_call>y</tool_call><|im_end|>", add_special_tokens=False
    )["input_ids"]
    assert (
        qwen3_tokenizer.decode(ids, skip_special_tokens=True)
        == "<think>\nx\n</think>\n\n<tool_call>y</tool_call>"
    )


def test_load_is_memoised_and_qwen3_ids_share_the_tokenizer(
    qwen3_tokenizer: Any, tokenizer_cache_dir: Path
) -> None:
    assert load_tokenizer(BUILTIN_TINY_QWEN3, tokenizer_cache_dir) is qwen3_tokenizer
    assert load_tokenizer("", tokenizer_cache_dir) is qwen3_tokenizer
    assert load_tokenizer("Qwen/Qwen3-4B-Thinking-2507", tokenizer_cache_dir) is qwen3_tokenizer


def test_second_load_reuses_the_disk_cache(qwen3_tokenizer: Any, tokenizer_cache_dir: Path) -> None:
    cached = qwen3_tokenizer_dir(tokenizer_cache_dir)
    before = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in cached.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(before)
    clear_tokenizer_memo()
    try:
        reloaded = load_tokenizer(BUILTIN_TINY_QWEN3, tokenizer_cache_dir)
        after = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in cached.iterdir()}
        assert after == before
        assert reloaded is not qwen3_tokenizer
        text = "分组密码的CBC模式"
        assert reloaded(text)["input_ids"] == qwen3_tokenizer(text)["input_ids"]
    finally:
        clear_tokenizer_memo()
    # No scratch directories are left beside the cache.
    assert sorted(path.name for path in cached.parent.iterdir()) == ["qwen3"]


def test_outdated_cache_is_rebuilt(qwen3_tokenizer: Any, tokenizer_cache_dir: Path, tmp_path: Path) -> None:
    target = qwen3_tokenizer_dir(tmp_path)
    shutil.copytree(qwen3_tokenizer_dir(tokenizer_cache_dir), target)
    (target / "cryptotune_build.json").write_text(json.dumps({"version": 0}), encoding="utf-8")
    try:
        rebuilt = load_tokenizer(BUILTIN_TINY_QWEN3, tmp_path)
    finally:
        clear_tokenizer_memo()
    assert json.loads((target / "cryptotune_build.json").read_text(encoding="utf-8"))["version"] > 0
    assert rebuilt.convert_tokens_to_ids("</think>") == 151668
    assert sorted(path.name for path in target.parent.iterdir()) == ["qwen3"]


def test_qwen3_model_names() -> None:
    assert is_qwen3_tokenizer_model(BUILTIN_TINY_QWEN3)
    assert is_qwen3_tokenizer_model("")
    assert is_qwen3_tokenizer_model("Qwen/Qwen3-4B-Thinking-2507")
    assert is_qwen3_tokenizer_model("qwen/qwen3-8b")
    assert not is_qwen3_tokenizer_model("Qwen/Qwen3.5-27B")
    assert not is_qwen3_tokenizer_model("Qwen/Qwen2.5-7B-Instruct")


def test_local_directory_uses_its_own_tokenizer(
    qwen3_tokenizer: Any, tokenizer_cache_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "my-model"
    shutil.copytree(qwen3_tokenizer_dir(tokenizer_cache_dir), model_dir)
    try:
        local = load_tokenizer(str(model_dir), tokenizer_cache_dir)
        assert local is not qwen3_tokenizer
        assert local("密钥交换")["input_ids"] == qwen3_tokenizer("密钥交换")["input_ids"]
        assert load_tokenizer(str(model_dir), tokenizer_cache_dir) is local
    finally:
        clear_tokenizer_memo()


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("builtin:huge", "unknown builtin model 'builtin:huge'"),
        ("not a model id", "neither a local directory nor a Hugging Face id"),
        (
            "cryptotune-tests/no-such-model",
            "not in the local Hugging Face cache and the daemon never downloads",
        ),
    ],
)
def test_unavailable_models(model: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(CryptotuneError) as caught:
        load_tokenizer(model, tmp_path)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert fragment in caught.value.message


def test_directory_without_tokenizer_files(tmp_path: Path) -> None:
    model_dir = tmp_path / "weights-only"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "qwen3"}', encoding="utf-8")
    with pytest.raises(CryptotuneError) as caught:
        load_tokenizer(str(model_dir), tmp_path)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "has no tokenizer files" in caught.value.message


def _record(value: dict[str, Any], index: int = 0) -> Record:
    item = convert_record(RawRecord(index=index, line=index + 1, value=value))
    assert isinstance(item, Record)
    return item


def test_tokenize_sample_masks_the_prompt(qwen3_tokenizer: Any) -> None:
    record = _record(
        {
            "instruction": "什么是AES？",
            "output": "对称分组密码。",
            "thinking": "<thinking>\n想一想。\n</thinking>",
        }
    )
    rendered = render_record(record)
    sample = tokenize_sample(qwen3_tokenizer, rendered, record)
    encode = qwen3_tokenizer.encode
    prompt_ids = encode(rendered.prompt, add_special_tokens=False)
    trained_ids = encode(rendered.trained, add_special_tokens=False)
    assert sample.input_ids == prompt_ids + trained_ids
    assert sample.labels == [IGNORE_INDEX] * len(prompt_ids) + trained_ids
    assert sample.prompt_tokens == len(prompt_ids)
    assert sample.total == len(sample.input_ids)
    assert sample.reasoning_tokens == len(encode("想一想。", add_special_tokens=False))
    assert sample.answer_tokens == len(encode("对称分组密码。", add_special_tokens=False))
    # The prompt ends where generation starts; the loss ends on <|im_end|>, not the newline after it.
    assert sample.input_ids[sample.prompt_tokens - 2 : sample.prompt_tokens] == [151667, 198]
    assert sample.input_ids[-1] == 151645


def test_batched_tokenisation_matches_single(qwen3_tokenizer: Any) -> None:
    values = [
        {"instruction": "q", "output": "a"},
        {
            "instruction": "比较SHA-1与SHA-256",
            "input": "简述",
            "output": "SHA-1已被攻破。",
            "thinking": "<thinking>碰撞</thinking>",
        },
        {"instruction": "x" * 500, "output": "y\n" * 100},
    ]
    records = [_record(value, index) for index, value in enumerate(values)]
    pairs = [(render_record(record), record) for record in records]
    batched = tokenize_samples(qwen3_tokenizer, pairs)
    assert batched == [tokenize_sample(qwen3_tokenizer, rendered, record) for rendered, record in pairs]
    assert tokenize_samples(qwen3_tokenizer, []) == []
    assert batched[0].reasoning_tokens == 0
