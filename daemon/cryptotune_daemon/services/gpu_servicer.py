"""GpuService: inventory and recommendation, and the Ray cluster's nodes when the daemon is attached."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from cryptotune.proto.v1 import gpu_pb2, gpu_pb2_grpc
from cryptotune_daemon.cluster.reader import ClusterReader
from cryptotune_daemon.gpus import GpuInventory, recommend
from cryptotune_daemon.services import serde
from cryptotune_daemon.services.error_catalog import unary


class GpuServicer(gpu_pb2_grpc.GpuServiceServicer):
    """Lists GPUs with the job that owns each one (and every node of the Ray cluster, if attached)."""

    def __init__(
        self,
        inventory: GpuInventory,
        owners: Callable[[], dict[str, str]],
        cluster: ClusterReader | None = None,
    ) -> None:
        self._inventory = inventory
        self._owners = owners
        self._cluster = cluster

    @unary
    async def ListGpus(
        self, request: gpu_pb2.ListGpusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gpu_pb2.ListGpusResponse:
        # NVML calls block for milliseconds: keep them off the event loop.
        gpus = await asyncio.to_thread(self._inventory.list_gpus)
        note = await asyncio.to_thread(self._inventory.note)
        if self._cluster is None:
            return serde.gpus(gpus, self._owners(), recommend(gpus), note)
        view = await self._cluster.read(gpus)
        return serde.gpus(gpus, self._owners(), recommend(gpus), note, view, self._cluster.address)
