"""GPU inventory (NVML) and training recommendations."""

from cryptotune_daemon.gpus.inventory import GpuInfo, GpuInventory, NvmlInventory, StaticInventory
from cryptotune_daemon.gpus.recommend import DEFAULT_MODEL, Recommendation, recommend

__all__ = [
    "DEFAULT_MODEL",
    "GpuInfo",
    "GpuInventory",
    "NvmlInventory",
    "Recommendation",
    "StaticInventory",
    "recommend",
]
