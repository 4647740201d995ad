"""GpuService: inventory and recommendation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from cryptotune.proto.v1 import gpu_pb2, gpu_pb2_grpc
from cryptotune_daemon.gpus import GpuInventory, recommend
from cryptotune_daemon.services import serde
from cryptotune_daemon.services.error_catalog import unary


class GpuServicer(gpu_pb2_grpc.GpuServiceServicer):
    """Lists GPUs with the job that owns each one."""

    def __init__(self, inventory: GpuInventory, owners: Callable[[], dict[str, str]]) -> None:
        self._inventory = inventory
        self._owners = owners

    @unary
    async def ListGpus(
        self, request: gpu_pb2.ListGpusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gpu_pb2.ListGpusResponse:
        # NVML calls block for milliseconds: keep them off the event loop.
        gpus = await asyncio.to_thread(self._inventory.list_gpus)
        note = await asyncio.to_thread(self._inventory.note)
        return serde.gpus(gpus, self._owners(), recommend(gpus), note)
