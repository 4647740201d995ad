"""``auto`` picks the fastest parallel strategy that fits, from made-up GPU inventories."""

from __future__ import annotations

from cryptotune_daemon.training.planner import DeviceInfo, plan_training

from .test_planner import A100_80GB, QWEN3_4B, V100_16GB, request

STRATEGIES = {
    "data_parallel",
    "sharded_data_parallel",
    "model_parallel",
    "pipeline_parallel",
    "hybrid_parallel",
}


def test_one_80gb_gpu_with_4k_sequences_trains_with_ddp() -> None:
    plan = plan_training(
        request(strategy="auto", max_seq_length=4096, micro_batch_size=1, world_size=1),
        QWEN3_4B,
        A100_80GB,
        [4096] * 64,
    )
    assert plan.strategy == "data_parallel"
    rows = {row["strategy"]: row for row in plan.strategies}
    assert set(rows) == STRATEGIES
    assert rows["data_parallel"]["fits"] is True
    assert 0 < rows["data_parallel"]["memory_per_gpu_mb"] <= A100_80GB.memory_budget_mb
    assert "data_parallel" in plan.choice


def test_four_16gb_gpus_with_32k_sequences_do_not_use_ddp() -> None:
    plan = plan_training(
        request(strategy="auto", max_seq_length=32768, micro_batch_size=1, world_size=4),
        QWEN3_4B,
        V100_16GB,
        [32768] * 64,
    )
    rows = {row["strategy"]: row for row in plan.strategies}
    assert rows["data_parallel"]["fits"] is False
    assert rows["data_parallel"]["reason"].startswith("does not fit")
    assert plan.strategy != "data_parallel"
    # Sharding needs less memory per GPU than holding everything.
    assert rows["sharded_data_parallel"]["memory_per_gpu_mb"] < rows["data_parallel"]["memory_per_gpu_mb"]


def test_sharding_is_chosen_when_only_the_weights_do_not_fit() -> None:
    small = DeviceInfo(
        kind="cuda", name="small", memory_total_mb=10240, memory_budget_mb=9216, bf16_supported=True
    )
    plan = plan_training(
        request(
            strategy="auto",
            max_seq_length=1024,
            micro_batch_size=1,
            world_size=4,
            gradient_checkpointing=True,
        ),
        QWEN3_4B,
        small,
        [1024] * 64,
    )
    rows = {row["strategy"]: row for row in plan.strategies}
    assert not rows["data_parallel"]["fits"] and rows["sharded_data_parallel"]["fits"]
    assert plan.strategy == "sharded_data_parallel"


def test_a_configured_strategy_is_kept_and_the_table_still_shown() -> None:
    plan = plan_training(
        request(strategy="sharded_data_parallel", max_seq_length=4096, micro_batch_size=1, world_size=2),
        QWEN3_4B,
        A100_80GB,
        [4096] * 64,
    )
    assert plan.strategy == "sharded_data_parallel"
    assert {row["strategy"] for row in plan.strategies} == STRATEGIES


# A 20 GB card (RTX 4000 Ada class): 18 GB usable.
GPU_20GB = DeviceInfo(
    kind="cuda", name="20GB", memory_total_mb=20480, memory_budget_mb=18432, bf16_supported=True
)


def test_hybrid_is_chosen_when_only_it_fits() -> None:
    """32k-token rows on 4 × 20 GB: FSDP2 still holds each layer's whole activations; tensor parallel
    pairs split them, and FSDP2 across the pairs shards the weights."""
    plan = plan_training(
        request(strategy="auto", max_seq_length=32768, micro_batch_size=1, world_size=4),
        QWEN3_4B,
        GPU_20GB,
        [32768] * 64,
    )
    rows = {row["strategy"]: row for row in plan.strategies}
    assert not rows["data_parallel"]["fits"] and not rows["sharded_data_parallel"]["fits"]
    assert rows["hybrid_parallel"]["fits"] and rows["hybrid_parallel"]["available"]
    assert plan.strategy == "hybrid_parallel"
    assert "tensor parallel in groups of 2 × FSDP2 over 2 group(s)" in rows["hybrid_parallel"]["reason"]


def test_hybrid_is_never_faster_than_sharding_alone_for_the_same_effective_batch() -> None:
    """Tensor-parallel pairs train half as many samples per micro-batch: when FSDP2 fits, auto keeps it."""
    plan = plan_training(
        request(strategy="auto", max_seq_length=16384, micro_batch_size=1, world_size=4),
        QWEN3_4B,
        GPU_20GB,
        [16384] * 64,
    )
    rows = {row["strategy"]: row for row in plan.strategies}
    assert rows["hybrid_parallel"]["fits"] and rows["sharded_data_parallel"]["fits"]
    assert rows["hybrid_parallel"]["step_seconds"] > rows["sharded_data_parallel"]["step_seconds"]
    assert plan.strategy in ("data_parallel", "sharded_data_parallel")


def test_hybrid_needs_groups_smaller_than_the_job() -> None:
    """With 2 GPUs, tensor parallel pairs leave no second group to shard across: hybrid is not offered."""
    plan = plan_training(
        request(strategy="auto", max_seq_length=32768, micro_batch_size=1, world_size=2),
        QWEN3_4B,
        GPU_20GB,
        [32768] * 64,
    )
    rows = {row["strategy"]: row for row in plan.strategies}
    assert rows["hybrid_parallel"]["available"] is False
    assert "needs at least 4 GPUs" in rows["hybrid_parallel"]["reason"]
    assert plan.strategy != "hybrid_parallel"


def test_the_effective_batch_counts_data_parallel_groups_not_processes() -> None:
    """Tensor-parallel pairs share samples: 4 processes in hybrid pairs are 2 data-parallel groups."""
    plan = plan_training(
        request(strategy="hybrid_parallel", max_seq_length=4096, micro_batch_size=2, world_size=4),
        QWEN3_4B,
        A100_80GB,
        [4096] * 64,
    )
    assert plan.world_size == 4
    assert plan.gradient_accumulation_steps == 4  # 16 = 2 × 4 × 2 groups
    assert plan.effective_batch_size == 16 and plan.steps_per_epoch == 4
    assert "× 2 data-parallel group(s) of 4 processes = effective batch 16" in plan.choice
