"""Parallel strategies: one small object per way of spreading a job over ranks (see ``base``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptotune_daemon.training.distributed import DistContext
    from cryptotune_daemon.training.strategies.base import Strategy


def make_strategy(
    name: str,
    dist: DistContext,
    *,
    compute_dtype: Any = None,
    tensor_parallel_size: int = 2,
    pipeline_schedule: str = "1f1b",
    pipeline_micro_batches: int = 2,
    nodes: int = 1,
) -> Strategy:
    """The strategy object for a resolved ``parallel.strategy`` (never ``auto``).

    ``tensor_parallel_size`` is the group size of ``hybrid_parallel`` (``model_parallel`` uses every rank).
    ``nodes`` is ``parallel.nodes``: FSDP2 then shards inside each machine and replicates across them
    (HSDP); the other strategies span the machines as they span the ranks of one.

    Raises:
        CryptotuneError: CONFIG_INVALID for a strategy that cannot train yet.
    """
    from cryptotune_daemon.config.strategies import refuse_unsupported

    refuse_unsupported(name)
    if name == "sharded_data_parallel":
        import torch

        from cryptotune_daemon.training.strategies.sharded import ShardedDataParallel

        return ShardedDataParallel(dist, compute_dtype=compute_dtype or torch.float32, nodes=nodes)
    if name == "hybrid_parallel":
        import torch

        from cryptotune_daemon.training.strategies.hybrid import HybridParallel

        return HybridParallel(dist, tensor_parallel_size, compute_dtype=compute_dtype or torch.float32)
    if name == "model_parallel":
        from cryptotune_daemon.training.strategies.tensor_parallel import TensorParallel

        return TensorParallel(dist)
    if name == "pipeline_parallel":
        from cryptotune_daemon.training.strategies.pipeline import PipelineParallel

        return PipelineParallel(dist, schedule=pipeline_schedule, micro_batches=pipeline_micro_batches)
    from cryptotune_daemon.training.strategies.data_parallel import DataParallel

    return DataParallel(dist)
