"""Periodic ``gpu_sample`` events (utilisation and memory of the job's GPUs) read through NVML."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)
SAMPLE_INTERVAL_S = 10.0


def _visible_handles(nvml: Any) -> list[Any]:
    """NVML handles of the GPUs in CUDA_VISIBLE_DEVICES (UUIDs or indices), or of all GPUs."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for item in visible:
        if item.isdigit():
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(item)))
        else:
            handles.append(nvml.nvmlDeviceGetHandleByUUID(item))
    return handles


def read_gpus(nvml: Any, handles: list[Any]) -> list[dict[str, Any]]:
    """One sample per GPU: NVML index, utilisation %, memory used/total in MB."""
    gpus = []
    for handle in handles:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            utilization = -1
        gpus.append(
            {
                "index": int(nvml.nvmlDeviceGetIndex(handle)),
                "utilization_percent": utilization,
                "memory_used_mb": int(memory.used // 2**20),
                "memory_total_mb": int(memory.total // 2**20),
            }
        )
    return gpus


class GpuSampler:
    """A daemon thread emitting ``gpu_sample`` every ``interval`` seconds until stopped."""

    def __init__(
        self, emit: Callable[[str, Mapping[str, Any]], None], interval: float = SAMPLE_INTERVAL_S
    ) -> None:
        self._emit = emit
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Starts sampling; False (and nothing started) when NVML is unavailable."""
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = _visible_handles(pynvml)
        except Exception as error:  # no driver, no binding: the job still trains
            log.warning("GPU sampling disabled: %s", error)
            return False
        self._thread = threading.Thread(
            target=self._run, args=(pynvml, handles), name="gpu-sampler", daemon=True
        )
        self._thread.start()
        return True

    def _run(self, nvml: Any, handles: list[Any]) -> None:
        while True:
            try:
                self._emit("gpu_sample", {"gpus": read_gpus(nvml, handles)})
            except Exception as error:  # a flaky NVML read must not end training
                log.warning("GPU sample failed: %s", error)
            if self._stop.wait(self._interval):
                return

    def stop(self) -> None:
        """Stops the thread (waits at most one interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)
            self._thread = None
