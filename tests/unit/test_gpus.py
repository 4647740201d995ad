"""GPU inventory interface and the recommendation it feeds."""

from __future__ import annotations

from cryptotune_daemon.gpus import GpuInfo, NvmlInventory, StaticInventory, recommend


def _gpu(index: int, total_mb: int, used_mb: int = 0, cc: tuple[int, int] = (9, 0)) -> GpuInfo:
    return GpuInfo(index, f"GPU-{index:04d}", "Fake H100", total_mb, used_mb, 0, 40, cc)


def test_no_gpu_recommends_cpu_fp32() -> None:
    rec = recommend([])
    assert rec.precision == "fp32"
    assert rec.world_size == 1
    assert "CPU" in rec.reason


def test_big_gpus_train_without_checkpointing_in_bf16() -> None:
    rec = recommend([_gpu(0, 81_559), _gpu(1, 81_559)])
    assert rec.precision == "bf16"
    assert rec.world_size == 2
    assert rec.strategy == "data_parallel"
    assert rec.gradient_checkpointing is False
    assert rec.per_device_batch_size >= 2
    assert rec.per_device_batch_size * rec.gradient_accumulation_steps * rec.world_size >= 16


def test_small_gpu_needs_checkpointing_and_old_cards_use_fp16() -> None:
    rec = recommend([_gpu(0, 16_384, cc=(7, 5))])
    assert rec.gradient_checkpointing is True
    assert rec.precision == "fp16"
    assert rec.per_device_batch_size >= 1


def test_busy_memory_counts_and_smallest_gpu_decides() -> None:
    roomy = recommend([_gpu(0, 81_559)])
    crowded = recommend([_gpu(0, 81_559), _gpu(1, 81_559, used_mb=70_000)])
    assert crowded.per_device_batch_size < roomy.per_device_batch_size or crowded.gradient_checkpointing


def test_too_little_memory_says_so() -> None:
    rec = recommend([_gpu(0, 8_192)])
    assert rec.per_device_batch_size == 1
    assert "may not fit" in rec.reason


def test_static_inventory_is_a_constructor_argument() -> None:
    inventory = StaticInventory([_gpu(0, 24_000)])
    assert [g.uuid for g in inventory.list_gpus()] == ["GPU-0000"]
    assert StaticInventory().note().endswith("CPU.")


def test_nvml_without_driver_is_empty_with_a_note() -> None:
    inventory = NvmlInventory()
    gpus = inventory.list_gpus()
    if gpus:  # a machine with a driver: the inventory must be complete
        assert all(g.uuid and g.memory_total_mb > 0 for g in gpus)
    else:
        assert "CPU" in inventory.note()
