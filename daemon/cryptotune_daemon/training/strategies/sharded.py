"""``sharded_data_parallel``: FSDP2, parameters, gradients and optimiser state sharded over the ranks
(over the ranks of each machine, replicated across machines — HSDP — when the job spans nodes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.strategies.base import Strategy


def decoder_layers(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a (peft-wrapped) causal LM: its decoder's ``layers``."""
    found = [
        m for name, m in module.named_modules() if name.endswith(".layers") and isinstance(m, nn.ModuleList)
    ]
    return list(found[0]) if found else []


def shard_model(loss_module: nn.Module, mesh: Any, compute_dtype: torch.dtype) -> nn.Module:
    """FSDP2 ``fully_shard`` on every decoder layer and on the root, over the 1-D ``mesh``.

    Parameters that are already DTensors on a sibling mesh dimension (tensor parallel) are sharded
    further: FSDP2 then keeps them as 2-D DTensors. On GPUs in half precision the compute runs in
    ``compute_dtype`` with fp32 gradient reduction.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh}
    if mesh.device_type == "cuda" and compute_dtype != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(loss_module):
        fully_shard(layer, **kwargs)
    fully_shard(loss_module, **kwargs)
    return loss_module


class ShardedDataParallel(Strategy):
    """FSDP2 (``fully_shard``) on every decoder layer and on the root (embeddings, final norm, head).

    Data parallel like DDP (each rank trains its slice of every step's samples), but each rank
    keeps only its shard of every parameter, gradient and optimiser state; a layer's weights are
    all-gathered for its forward and backward and freed after. LoRA parameters stay fp32; on GPUs
    the compute runs in bf16 (``MixedPrecisionPolicy``) with gradients reduced in fp32. On CPUs
    everything is fp32.

    Across machines (``parallel.nodes`` > 1) it is HSDP: a 2-D mesh ``(dp_replicate, dp_shard)`` =
    ``(nodes, ranks per node)``; each machine's ranks shard the model among themselves (the all-gathers
    stay on the fast links inside a node) and the machines hold replicas, their gradients all-reduced
    across nodes once per step. Ranks are numbered node by node (ranks ``0..k-1`` on the first node,
    as torchrun and the Ray driver number them), so a ``dp_shard`` group is one machine.

    Args:
        dist: this process's place in the job.
        compute_dtype: the forward/backward dtype on GPUs (the training precision).
        nodes: machines the ranks span (1: shard over every rank).

    Raises:
        CryptotuneError: CONFIG_INVALID when the ranks cannot be spread evenly over the nodes.
    """

    name = "sharded_data_parallel"

    def __init__(self, dist: Any, compute_dtype: torch.dtype = torch.float32, nodes: int = 1) -> None:
        super().__init__(dist)
        self.compute_dtype = compute_dtype
        self.nodes = max(int(nodes), 1) if dist.distributed else 1
        if dist.world_size % self.nodes:
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                f"parallel.nodes is {self.nodes} but the job has {dist.world_size} ranks: each machine runs "
                f"the same number of ranks; set parallel.world_size to a multiple of {self.nodes}",
            )
        self._mesh: Any = None

    @property
    def keeps_whole_model(self) -> bool:
        return not self.dist.distributed

    def mesh(self) -> dict[str, int]:
        if self.nodes > 1:
            return {"dp_replicate": self.nodes, "dp_shard": self.dist.world_size // self.nodes}
        return {"dp_shard": self.dist.world_size}

    def wrap(self, loss_module: nn.Module) -> nn.Module:
        if not self.dist.distributed:
            return loss_module
        from torch.distributed.device_mesh import init_device_mesh

        shape = self.mesh()
        # Replicate × shard makes fully_shard do HSDP; one dimension is plain FSDP.
        self._mesh = init_device_mesh(
            self.dist.device.type, tuple(shape.values()), mesh_dim_names=tuple(shape)
        )
        return shard_model(loss_module, self._mesh, self.compute_dtype)

    def no_sync(self, module: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return _gradient_sync_off(module)

    @contextlib.contextmanager
    def evaluating(self, module: nn.Module) -> Iterator[DistContext | None]:
        """Gathers the root's weights (embeddings, norm, head) for the evaluation; each layer gathers
        its own as it runs. Every rank evaluates every example: their forwards must pair up."""
        unshard = getattr(module, "unshard", None)
        if unshard is None:
            yield None
            return
        unshard()
        try:
            yield DistContext(rank=0, world_size=1, local_rank=self.dist.local_rank, device=self.dist.device)
        finally:
            module.reshard()  # type: ignore[operator]


@contextlib.contextmanager
def _gradient_sync_off(module: nn.Module) -> Any:
    """Keeps a micro-batch's gradients local; the step's last micro-batch reduce-scatters the sum."""
    setter = getattr(module, "set_requires_gradient_sync", None)
    if setter is None:
        yield
        return
    setter(False)
    try:
        yield
    finally:
        setter(True)
