"""Training data: split, deterministic length-grouped batches per rank, padding, planning, loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cryptotune_daemon.data.records import Record
from cryptotune_daemon.training.batching import collate
from cryptotune_daemon.training.dataset import Example, dedupe, split_counts, split_examples
from cryptotune_daemon.training.evaluation import answer_part, term_recall, thinking_format_ok
from cryptotune_daemon.training.models import ModelFacts
from cryptotune_daemon.training.planner import DeviceInfo, PlanRequest, estimate_memory, plan_training


def _example(index: int, length: int, prompt: int = 3) -> Example:
    ids = tuple(range(100 + index, 100 + index + length))
    return Example(
        index=index,
        line=index + 1,
        input_ids=ids,
        labels=(-100,) * prompt + ids[prompt:],
        prompt_tokens=prompt,
    )


@pytest.mark.parametrize(
    ("total", "train", "evaluation", "expected"),
    [
        (16, 0.75, 0.25, (12, 4)),
        (10, 0.9, 0.1, (9, 1)),
        (3, 0.9, 0.1, (2, 1)),
        (1, 0.9, 0.1, (1, 0)),
        (10, 0.5, 0.2, (5, 2)),
    ],
)
def test_split_counts(total: int, train: float, evaluation: float, expected: tuple[int, int]) -> None:
    assert split_counts(total, train, evaluation) == expected


def test_split_is_seeded_and_disjoint() -> None:
    examples = [_example(i, 5) for i in range(20)]
    train, evaluation = split_examples(examples, seed=5, shuffle=True, train_ratio=0.8, eval_ratio=0.2)
    again = split_examples(examples, seed=5, shuffle=True, train_ratio=0.8, eval_ratio=0.2)
    assert (train, evaluation) == again
    assert len(train) == 16 and len(evaluation) == 4
    assert {e.index for e in train}.isdisjoint(e.index for e in evaluation)
    other = split_examples(examples, seed=6, shuffle=True, train_ratio=0.8, eval_ratio=0.2)
    assert [e.index for e in other[1]] != [e.index for e in evaluation]


def test_dedupe_keeps_the_first_of_exact_duplicates() -> None:
    def record(index: int, output: str) -> Record:
        return Record(index=index, line=index + 1, instruction="q", input="", output=output)

    unique, dropped = dedupe([record(0, "a"), record(1, "b"), record(2, "a"), record(3, "a")])
    assert [r.index for r in unique] == [0, 1] and dropped == 2


def test_collate_pads_to_the_longest_and_masks_padding() -> None:
    batch = collate([_example(0, 4), _example(1, 6)], pad_token_id=7)
    assert batch["input_ids"].shape == (2, 6)
    assert batch["input_ids"][0, 4:].tolist() == [7, 7]
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 6]
    assert batch["labels"][0].tolist() == [-100, -100, -100, 103, -100, -100]


def test_generation_checks() -> None:
    assert thinking_format_ok("推理过程\n</think>\n\nAES 是分组密码。")
    assert not thinking_format_ok("推理过程没有结束")
    assert not thinking_format_ok("推理</think>\n\n  ")
    assert answer_part("x</think>ans</think>more") == "ans</think>more"
    assert term_recall("使用 aes 与 SM4", ["AES", "SM4", "RSA"]) == pytest.approx(2 / 3)
    assert term_recall(None, ["AES"]) == 0.0
    assert term_recall("anything", []) is None


FACTS_4B = ModelFacts(
    num_parameters=4_022_468_096,
    hidden_size=2560,
    intermediate_size=9728,
    num_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
)


def _request(**overrides: object) -> PlanRequest:
    values: dict[str, object] = {
        "micro_batch_size": None,
        "gradient_accumulation_steps": None,
        "gradient_checkpointing": None,
        "fp16": False,
        "bf16": True,
        "num_train_epochs": 2.0,
        "max_steps": -1,
        "warmup_ratio": 0.1,
        "lora_rank": 16,
        "lora_target_modules": ("q_proj", "k_proj", "v_proj", "o_proj"),
    }
    values.update(overrides)
    return PlanRequest(**values)  # type: ignore[arg-type]


def test_auto_settings_fit_the_gpu_and_keep_the_effective_batch() -> None:
    h100 = DeviceInfo(
        kind="cuda", name="H100", memory_total_mb=81559, memory_budget_mb=73403, bf16_supported=True
    )
    plan = plan_training(_request(), FACTS_4B, h100, [2048] * 1000)
    assert plan.precision == "bf16"
    assert plan.micro_batch_size * plan.gradient_accumulation_steps == 16
    assert plan.memory_estimate_mb <= h100.memory_budget_mb
    assert plan.steps_per_epoch == math.ceil(1000 / 16) and plan.total_steps == 2 * plan.steps_per_epoch
    assert plan.warmup_steps == math.ceil(0.1 * plan.total_steps)
    small = DeviceInfo(
        kind="cuda", name="T4", memory_total_mb=15360, memory_budget_mb=13824, bf16_supported=False
    )
    tight = plan_training(_request(), FACTS_4B, small, [2048] * 1000)
    assert tight.precision == "fp16" and tight.gradient_checkpointing
    assert tight.micro_batch_size < plan.micro_batch_size
    assert tight.micro_batch_size * tight.gradient_accumulation_steps >= 16


def test_memory_estimate_grows_with_batch_and_shrinks_with_checkpointing() -> None:
    def estimate(micro: int, checkpointing: bool) -> int:
        return estimate_memory(
            FACTS_4B,
            device="cuda",
            rows=micro,
            width=2048,
            precision="bf16",
            gradient_checkpointing=checkpointing,
            lora_parameters=0,
        ).total

    assert estimate(1, False) < estimate(4, False)
    assert estimate(4, True) < estimate(4, False)
    assert 7_500 < estimate(1, True) < 20_000  # weights alone are 4.0 B × 2 bytes ≈ 7.7 GB


def test_cpu_plans_fp32_and_explicit_values_win() -> None:
    cpu = DeviceInfo(kind="cpu", name="cpu", memory_total_mb=16000, memory_budget_mb=8000)
    plan = plan_training(
        _request(
            micro_batch_size=2, gradient_accumulation_steps=3, max_steps=7, gradient_checkpointing=False
        ),
        FACTS_4B,
        cpu,
        [100] * 10,
    )
    assert (plan.precision, plan.micro_batch_size, plan.gradient_accumulation_steps) == ("fp32", 2, 3)
    assert plan.total_steps == 7 and plan.effective_batch_size == 6 and not plan.gradient_checkpointing


def test_label_only_loss_equals_full_logits_cross_entropy() -> None:
    from cryptotune_daemon.training.loss import per_example_loss_sums
    from cryptotune_daemon.training.models import build_tiny_qwen3

    model = build_tiny_qwen3()
    batch = collate([_example(0, 12, prompt=5), _example(1, 9, prompt=4)], pad_token_id=151643)
    with torch.no_grad():
        sums, counts = per_example_loss_sums(model, **batch, chunk_tokens=3)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="none"
    ).view(2, -1)
    torch.testing.assert_close(sums, reference.sum(dim=1), rtol=1e-5, atol=1e-4)
    assert counts.tolist() == [7, 5]


def test_prepare_data_masks_prompts_and_caches_tokenisation(tmp_path: Path, qwen3_tokenizer: Any) -> None:
    from cryptotune_daemon.training.dataset import prepare_data, tokenize_cached
    from cryptotune_daemon.training.hashing import data_hash, tokenizer_hash

    records = [
        {
            "instruction": f"什么是 SM{i}？",
            "input": "",
            "output": f"SM{i} 是国密算法。",
            "thinking": "回忆定义。",
        }
        for i in range(6)
    ]
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    kwargs: dict[str, Any] = {
        "data_path": data,
        "display_name": "records.jsonl",
        "data_format": "auto",
        "tokenizer": qwen3_tokenizer,
        "cache_dir": tmp_path / "cache",
        "data_hash": data_hash(data),
        "tokenizer_hash": tokenizer_hash(qwen3_tokenizer),
        "max_seq_length": 256,
        "max_samples": 5,
        "seed": 1,
        "shuffle": True,
        "train_ratio": 0.8,
        "eval_ratio": 0.2,
    }
    prepared = prepare_data(**kwargs)
    assert prepared.stats["used"] == 5 and len(prepared.train) == 4 and len(prepared.eval) == 1
    for example in prepared.train + prepared.eval:
        assert example.index < 5
        assert set(example.labels[: example.prompt_tokens]) == {-100}
        assert example.labels[example.prompt_tokens :] == example.input_ids[example.prompt_tokens :]
        prompt = qwen3_tokenizer.decode(list(example.input_ids[: example.prompt_tokens]))
        assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    cached = list((tmp_path / "cache" / "tokenized").glob("*.pt"))
    assert len(cached) == 1
    # The cache is read back without tokenising again (no tokenizer needed).
    from cryptotune_daemon.training.dataset import read_records

    again, from_cache = tokenize_cached(read_records(data, display_name="x")[:5], None, cached[0])
    assert from_cache and sorted(again, key=lambda e: e.index) == sorted(
        prepared.train + prepared.eval, key=lambda e: e.index
    )
    assert prepare_data(**kwargs).split == prepared.split


def test_training_refuses_invalid_records_counting_records_not_problems(tmp_path: Path) -> None:
    from cryptotune_daemon.errors import CryptotuneError
    from cryptotune_daemon.training.dataset import read_records

    data = tmp_path / "bad.jsonl"
    good = '{"instruction": "什么是SM3？", "output": "杂凑算法。", "thinking": "<thinking>想</thinking>"}'
    data.write_text(f'{good}\n{{"instruction": 5, "output": "x", "difficulty": "hard"}}\n', encoding="utf-8")
    with pytest.raises(CryptotuneError) as info:
        read_records(data, display_name="bad.jsonl")
    message = info.value.message
    assert message.startswith("1 invalid record(s) (2 problems) in bad.jsonl; fix them and resubmit:")
    assert "bad.jsonl line 2 field 'instruction'" in message
    assert "bad.jsonl line 2 field 'difficulty'" in message
