"""What a worker reports: event lines (rank 0 only) and GPU samples of the visible GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.pipeline import read_events


def test_event_writer_lines_are_json_and_only_rank_zero_writes(tmp_path: Path) -> None:
    from cryptotune_daemon.worker.events import EventWriter

    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    writer.emit("progress", {"loss": float("nan"), "step": 1, "nested": {"x": float("inf")}})
    writer.warning("加密")
    writer.close()
    EventWriter(path, enabled=False).emit("progress", {"step": 2})
    events = read_events(path)
    assert [e["type"] for e in events] == ["progress", "warning"]
    assert events[0]["data"] == {"loss": None, "step": 1, "nested": {"x": None}}
    assert events[1]["data"]["message"] == "加密"


def test_gpu_samples_cover_each_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from cryptotune_daemon.worker.gpu_sampler import _visible_handles, read_gpus

    class FakeNvml:
        NVMLError = RuntimeError

        def nvmlDeviceGetCount(self) -> int:
            return 3

        def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
            return index

        def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
            return {"GPU-a": 0, "GPU-c": 2}[uuid]

        def nvmlDeviceGetIndex(self, handle: int) -> int:
            return handle

        def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
            return SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30)

        def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
            return SimpleNamespace(gpu=10 * handle)

    nvml = FakeNvml()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-c")
    gpus = read_gpus(nvml, _visible_handles(nvml))
    assert gpus == [
        {"index": 0, "utilization_percent": 0, "memory_used_mb": 1024, "memory_total_mb": 81920},
        {"index": 2, "utilization_percent": 20, "memory_used_mb": 3072, "memory_total_mb": 81920},
    ]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert len(_visible_handles(nvml)) == 3
