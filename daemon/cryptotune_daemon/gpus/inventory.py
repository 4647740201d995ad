"""What GPUs this machine has, read through NVML (nvidia-ml-py), behind a small interface."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU. -1 means the driver did not report the value."""

    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_percent: int = -1
    temperature_c: int = -1
    compute_capability: tuple[int, int] = (0, 0)


class GpuInventory(Protocol):
    """Anything that can list GPUs: NVML in production, a fixed list in tests."""

    def list_gpus(self) -> list[GpuInfo]:
        """The GPUs visible now (empty when there are none)."""
        ...

    def note(self) -> str:
        """A human note about the inventory (e.g. why it is empty)."""
        ...


class StaticInventory:
    """A fixed list of GPUs, for tests and for machines described by hand."""

    def __init__(self, gpus: list[GpuInfo] | None = None, note: str = "") -> None:
        self._gpus = list(gpus or [])
        self._note = note

    def list_gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def note(self) -> str:
        return self._note or ("" if self._gpus else "No GPU listed: jobs run on the CPU.")


class NvmlInventory:
    """Reads GPUs through NVML; an empty list (and a note) when there is no NVIDIA driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._error = ""

    def _init(self) -> Any:
        try:
            import pynvml
        except ImportError:  # the thin-client install has no NVML binding
            self._error = "nvidia-ml-py is not installed"
            return None
        if not self._ready and not self._error:
            try:
                pynvml.nvmlInit()
                self._ready = True
            except pynvml.NVMLError as error:
                self._error = str(error)
        return pynvml if self._ready else None

    def list_gpus(self) -> list[GpuInfo]:
        with self._lock:
            nvml = self._init()
            if nvml is None:
                return []
            gpus = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(
                    GpuInfo(
                        index=index,
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        memory_total_mb=int(memory.total) // (1024 * 1024),
                        memory_used_mb=int(memory.used) // (1024 * 1024),
                        utilization_percent=_optional(
                            lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu
                        ),
                        temperature_c=_optional(
                            lambda h=handle: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
                        ),
                        compute_capability=_capability(nvml, handle),
                    )
                )
            return gpus

    def note(self) -> str:
        with self._lock:
            self._init()
            if self._error:
                return f"No NVIDIA GPU available ({self._error}): jobs run on the CPU."
            return ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(read: Any) -> int:
    try:
        return int(read())
    except Exception:  # NVML raises NotSupported on some boards: report unknown
        return -1


def _capability(nvml: Any, handle: Any) -> tuple[int, int]:
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        return int(major), int(minor)
    except Exception:
        return (0, 0)
