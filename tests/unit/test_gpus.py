"""GPU inventory interface and the recommendation it feeds."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from cryptotune_daemon.gpus import GpuInfo, NvmlInventory, Recommendation, StaticInventory, recommend


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
    # The busy card has 11,559 MiB free: the pair is sized exactly as one card with that much memory.
    alone = recommend([_gpu(0, 11_559)])

    def sizing(rec: Recommendation) -> tuple[int, bool]:
        return rec.per_device_batch_size, rec.gradient_checkpointing

    assert sizing(crowded) == sizing(alone) != sizing(roomy)
    assert crowded.world_size == 2 and "11559 MiB free per GPU" in crowded.reason


def test_too_little_memory_says_so() -> None:
    rec = recommend([_gpu(0, 8_192)])
    assert rec.per_device_batch_size == 1
    assert "may not fit" in rec.reason


def test_static_inventory_is_a_constructor_argument() -> None:
    inventory = StaticInventory([_gpu(0, 24_000)])
    assert [g.uuid for g in inventory.list_gpus()] == ["GPU-0000"]
    assert StaticInventory().note().endswith("CPU.")


class _FakeNvml(types.ModuleType):
    """The ``pynvml`` module as NVML answers with ``gpus`` attached, or with no driver loaded."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[GpuInfo] | None) -> None:
        super().__init__("pynvml")
        self._gpus = gpus

    def nvmlInit(self) -> None:
        if self._gpus is None:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus or [])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> GpuInfo:
        return (self._gpus or [])[index]

    def nvmlDeviceGetMemoryInfo(self, gpu: GpuInfo) -> SimpleNamespace:
        return SimpleNamespace(total=gpu.memory_total_mb * 2**20, used=gpu.memory_used_mb * 2**20)

    def nvmlDeviceGetUUID(self, gpu: GpuInfo) -> bytes:
        return gpu.uuid.encode()

    def nvmlDeviceGetName(self, gpu: GpuInfo) -> str:
        return gpu.name

    def nvmlDeviceGetUtilizationRates(self, gpu: GpuInfo) -> SimpleNamespace:
        if gpu.utilization_percent < 0:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=gpu.utilization_percent)

    def nvmlDeviceGetTemperature(self, gpu: GpuInfo, sensor: int) -> int:
        return gpu.temperature_c

    def nvmlDeviceGetCudaComputeCapability(self, gpu: GpuInfo) -> tuple[int, int]:
        return gpu.compute_capability


def test_nvml_without_driver_is_empty_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(None))
    inventory = NvmlInventory()
    assert inventory.list_gpus() == []
    assert inventory.note() == "No NVIDIA GPU available (Driver Not Loaded): jobs run on the CPU."


def test_nvml_lists_every_gpu_the_driver_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    attached = [
        GpuInfo(0, "GPU-aaaa", "NVIDIA H100 80GB HBM3", 81_559, 1_024, 35, 41, (9, 0)),
        GpuInfo(1, "GPU-bbbb", "Tesla T4", 15_360, 0, -1, 30, (7, 5)),  # no utilisation reading
    ]
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(attached))
    inventory = NvmlInventory()
    assert inventory.list_gpus() == attached
    assert inventory.note() == ""
