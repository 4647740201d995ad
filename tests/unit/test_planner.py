"""The memory planner: the estimate's parts, and the auto settings it picks on small and large GPUs."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cryptotune_daemon.training.models import ModelFacts
from cryptotune_daemon.training.planner import (
    DeviceInfo,
    PlanRequest,
    estimate_memory,
    lora_parameter_count,
    plan_training,
)

QWEN3_4B = ModelFacts(
    num_parameters=4_022_468_096,
    hidden_size=2560,
    intermediate_size=9728,
    num_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
)
A100_80GB = DeviceInfo(
    kind="cuda", name="A100-80GB", memory_total_mb=81920, memory_budget_mb=73728, bf16_supported=True
)
V100_16GB = DeviceInfo(
    kind="cuda", name="V100-16GB", memory_total_mb=16384, memory_budget_mb=14745, bf16_supported=False
)


def request(**overrides: Any) -> PlanRequest:
    values: dict[str, Any] = {
        "micro_batch_size": None,
        "gradient_accumulation_steps": None,
        "gradient_checkpointing": None,
        "fp16": False,
        "bf16": True,
        "num_train_epochs": 1.0,
        "max_steps": -1,
        "warmup_ratio": 0.0,
        "lora_rank": 16,
        "lora_target_modules": ("all-linear",),
        "max_seq_length": 2048,
    }
    values.update(overrides)
    return PlanRequest(**values)


def mixed_lengths(count: int = 2000, seed: int = 0) -> list[int]:
    """Reasoning samples: mostly 300–1500 tokens, a few near the 2048 limit."""
    rng = random.Random(seed)
    return [rng.randint(300, 1500) for _ in range(count - 5)] + [2040, 2000, 1990, 1900, 1800]


def estimate(rows: int = 4, width: int = 2048, checkpointing: bool = False, **kwargs: Any) -> int:
    return estimate_memory(
        QWEN3_4B,
        device="cuda",
        rows=rows,
        width=width,
        precision=kwargs.pop("precision", "bf16"),
        gradient_checkpointing=checkpointing,
        lora_parameters=lora_parameter_count(QWEN3_4B, 16, ("all-linear",)),
        **kwargs,
    ).total


def test_estimate_grows_with_sequence_length_and_batch_and_shrinks_with_checkpointing() -> None:
    assert estimate(width=512) < estimate(width=1024) < estimate(width=2048) < estimate(width=4096)
    assert estimate(rows=1) < estimate(rows=2) < estimate(rows=4) < estimate(rows=8)
    for rows in (1, 4, 8):
        assert estimate(rows=rows, checkpointing=True) < estimate(rows=rows)

    def activations(checkpointing: bool) -> int:
        return estimate_memory(
            QWEN3_4B,
            device="cuda",
            rows=4,
            width=2048,
            precision="bf16",
            gradient_checkpointing=checkpointing,
            lora_parameters=0,
        ).activations

    # One saved input per layer instead of every layer's activations: several times less.
    assert activations(True) * 5 < activations(False)
    # fp32 weights and activations take twice the bytes; FlashAttention needs no SDPA mask.
    assert estimate(precision="fp32") > estimate()
    assert estimate(varlen_attention=True) < estimate()
    parts = estimate_memory(
        QWEN3_4B,
        device="cuda",
        rows=1,
        width=2048,
        precision="bf16",
        gradient_checkpointing=True,
        lora_parameters=33_030_144,
    )
    # The parts add up, and each is of the right size: 4.0 B bf16 weights ≈ 8.4 GB with slack,
    # 33 M LoRA parameters × 16 bytes ≈ 0.58 GB.
    assert parts.total == sum(
        (parts.weights, parts.lora_and_optimizer, parts.activations, parts.attention_mask, parts.logits, 600)
    )
    assert 8_000 < parts.weights < 9_000 and 500 < parts.lora_and_optimizer < 600
    assert "weights 8," in parts.describe() and parts.describe().endswith(f"= {parts.total:,} MB")


def test_memory_is_planned_for_the_longest_packed_row() -> None:
    # The heaviest micro-batch holds the micro-batch's worth of longest samples: padded, one row
    # each as wide as the longest; packed, rows of at most max_seq_length tokens.
    lengths = [300] * 60 + [1000, 990, 980, 970]
    padded = plan_training(request(micro_batch_size=8, packing=False), QWEN3_4B, A100_80GB, lengths)
    assert (padded.packed_rows, padded.longest_row_tokens) == (8, 1000)
    packed = plan_training(request(micro_batch_size=8), QWEN3_4B, A100_80GB, lengths)
    # First-fit decreasing needs 3 rows (widest 1990); evened out, the widest is 1950.
    assert packed.packing and (packed.packed_rows, packed.longest_row_tokens) == (3, 1950)
    assert packed.memory_estimate_mb < padded.memory_estimate_mb
    wide = plan_training(request(micro_batch_size=8, max_seq_length=8192), QWEN3_4B, A100_80GB, lengths)
    assert (wide.packed_rows, wide.longest_row_tokens) == (1, 5140)
    # Never narrower than the longest sample, whatever max_seq_length says.
    narrow = plan_training(request(micro_batch_size=2, max_seq_length=16), QWEN3_4B, A100_80GB, lengths)
    assert (narrow.packed_rows, narrow.longest_row_tokens) == (2, 1000)


@pytest.mark.parametrize("lengths", [[2048] * 1000, mixed_lengths()], ids=["full-rows", "mixed"])
def test_a_4b_model_gets_different_settings_on_80gb_and_16gb_cards(lengths: list[int]) -> None:
    large = plan_training(request(), QWEN3_4B, A100_80GB, lengths)
    small = plan_training(request(), QWEN3_4B, V100_16GB, lengths)
    assert (large.precision, small.precision) == ("bf16", "fp16")  # the V100 has no bf16
    assert not large.gradient_checkpointing and small.gradient_checkpointing
    assert large.micro_batch_size >= small.micro_batch_size
    for plan, device in ((large, A100_80GB), (small, V100_16GB)):
        assert plan.effective_batch_size == plan.micro_batch_size * plan.gradient_accumulation_steps == 16
        assert plan.memory_estimate_mb <= device.memory_budget_mb == plan.memory_budget_mb
        assert plan.steps_per_epoch == -(-len(lengths) // 16)
        assert "effective batch 16" in plan.choice and device.name in plan.choice
    assert "gradient checkpointing off" in large.choice and "gradient checkpointing on" in small.choice


def test_effective_batch_is_kept_whatever_is_fixed() -> None:
    lengths = mixed_lengths(400)
    fixed_micro = plan_training(request(micro_batch_size=2), QWEN3_4B, A100_80GB, lengths)
    assert (fixed_micro.micro_batch_size, fixed_micro.gradient_accumulation_steps) == (2, 8)
    two_gpus = plan_training(request(world_size=2), QWEN3_4B, V100_16GB, lengths)
    assert two_gpus.effective_batch_size == 16 and two_gpus.world_size == 2
    both = plan_training(
        request(micro_batch_size=3, gradient_accumulation_steps=5), QWEN3_4B, V100_16GB, lengths
    )
    assert both.effective_batch_size == 15
    # An impossible fit is planned anyway, with a warning rather than a silent failure.
    tiny = DeviceInfo(kind="cuda", name="tiny", memory_total_mb=8000, memory_budget_mb=7200)
    squeezed = plan_training(request(), QWEN3_4B, tiny, lengths)
    assert squeezed.micro_batch_size == 1 and squeezed.effective_batch_size == 16
    assert any("exceeds the budget" in note for note in squeezed.notes)


def test_cpu_plans_fp32() -> None:
    cpu = DeviceInfo(kind="cpu", name="cpu", memory_total_mb=16000, memory_budget_mb=12000)
    plan = plan_training(request(), QWEN3_4B, cpu, [200] * 32)
    assert plan.precision == "fp32" and "CPUs train in fp32" in plan.choice
