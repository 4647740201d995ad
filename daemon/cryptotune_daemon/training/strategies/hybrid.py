"""``hybrid_parallel``: tensor parallel inside groups of ranks × FSDP2 sharding across the groups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.strategies.sharded import ShardedDataParallel, shard_model
from cryptotune_daemon.training.strategies.tensor_parallel import (
    scale_gradients,
    split_gradient_norm,
    split_layers,
)

# The 2-D mesh's dimensions, outer first: ranks r and r + 1 … (consecutive, one machine's fastest
# links) form a tensor-parallel group; the groups shard parameters and samples between them.
MESH_DIMS = ("dp_shard", "tp")


def hybrid_problem(world_size: int, tensor_parallel_size: int) -> str | None:
    """Why ``tensor_parallel_size`` cannot make a 2-D mesh of ``world_size`` ranks, else None."""
    if 1 < tensor_parallel_size < world_size and world_size % tensor_parallel_size == 0:
        return None
    fitting = [d for d in range(2, world_size) if world_size % d == 0]
    instead = (
        f"set parallel.tensor_parallel_size to {' or '.join(map(str, fitting))}"
        if fitting
        else "run at least 4 processes (parallel.world_size: 4, tensor_parallel_size: 2)"
    )
    return (
        f"hybrid_parallel needs tensor parallel groups of more than one and fewer than all "
        f"{world_size} processes that divide them (got tensor_parallel_size "
        f"{tensor_parallel_size}); {instead}"
    )


class HybridParallel(ShardedDataParallel):
    """A ``(dp_shard, tp)`` device mesh: tensor parallel in each group of ``tensor_parallel_size``
    consecutive ranks, FSDP2 across the groups.

    Each decoder layer's projections are split over the ``tp`` sub-mesh exactly as ``model_parallel``
    splits them over all ranks (:func:`~.tensor_parallel.layer_plan`); then ``fully_shard`` shards every
    layer and the root over the ``dp_shard`` sub-mesh, so a split projection becomes a 2-D DTensor
    (sharded on both dimensions) and a whole one (embeddings, norms, the unsplit LoRA factor) a 1-D
    one sharded over the groups. The ranks of one group train the same samples; the groups are the
    data-parallel ranks, and FSDP2 averages their gradients. Checkpoints gather every tensor whole
    (``full_tensor()`` over the 2-D mesh), by name.

    Args:
        dist: this process's place in the job.
        tensor_parallel_size: ranks per tensor-parallel group (more than 1, fewer than the world size,
            dividing it).
        compute_dtype: the forward/backward dtype on GPUs (the training precision).
    """

    name = "hybrid_parallel"

    def __init__(
        self, dist: DistContext, tensor_parallel_size: int, compute_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(dist, compute_dtype=compute_dtype)
        self.tensor_parallel_size = tensor_parallel_size if dist.distributed else 1

    @property
    def data_parallel_rank(self) -> int:
        return self.dist.rank // self.tensor_parallel_size

    @property
    def data_parallel_size(self) -> int:
        return max(self.dist.world_size // self.tensor_parallel_size, 1)

    def mesh(self) -> dict[str, int]:
        return {"tp": self.tensor_parallel_size, "dp_shard": self.data_parallel_size}

    def optimizer_options(self) -> dict[str, Any]:
        # Parameters on 1-D and 2-D meshes cannot share one multi-tensor kernel.
        return {"foreach": False}

    def wrap(self, loss_module: nn.Module) -> nn.Module:
        if not self.dist.distributed:
            return loss_module
        from torch.distributed.device_mesh import init_device_mesh

        problem = hybrid_problem(self.dist.world_size, self.tensor_parallel_size)
        if problem is not None:
            from cryptotune_daemon.errors import CryptotuneError, ErrorCode

            raise CryptotuneError(ErrorCode.CONFIG_INVALID, problem)
        self._mesh = init_device_mesh(
            self.dist.device.type,
            (self.data_parallel_size, self.tensor_parallel_size),
            mesh_dim_names=MESH_DIMS,
        )
        split_layers(loss_module, self._mesh["tp"], self.name)
        return shard_model(loss_module, self._mesh["dp_shard"], self.compute_dtype)

    def clip_grad_norm(self, parameters: Iterable[nn.Parameter], max_norm: float) -> float:
        """The global norm over gradients sharded on one or both mesh dimensions; clips them by it."""
        params, norm = split_gradient_norm(parameters, self.dist)
        scale_gradients(params, norm, max_norm)
        return norm

    def _like(self, param: torch.Tensor, value: Any) -> Any:
        """This rank's block of a whole saved optimiser value, laid out like the (2-D) DTensor ``param``."""
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        if not (isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.dim() > 0):
            return super()._like(param, value)
        shape, offset = compute_local_shape_and_global_offset(
            value.shape, param.device_mesh, param.placements
        )
        block = value
        for dim, (start, length) in enumerate(zip(offset, shape, strict=True)):
            block = block.narrow(dim, start, length)
        return DTensor.from_local(
            block.to(self.dist.device).contiguous(),
            param.device_mesh,
            param.placements,
            run_check=False,
            shape=param.shape,
            stride=param.stride(),
        )
