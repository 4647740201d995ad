"""``model_parallel``: tensor parallelism, every decoder layer's projections split over all ranks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.strategies.base import SameSamplesOnEveryRank
from cryptotune_daemon.training.strategies.sharded import decoder_layers

# Projections of a decoder layer, by their path inside it: split by output features (colwise: each
# rank computes some heads / some of the MLP's hidden units) or by input features (rowwise: each rank
# multiplies its slice and the partial sums are all-reduced into the layer's output).
COLWISE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
ROWWISE = ("self_attn.o_proj", "mlp.down_proj")


def layer_plan(layer: nn.Module) -> dict[str, Any]:
    """The DTensor ``parallelize_module`` plan of one (peft-wrapped) decoder layer.

    A LoRA layer's frozen ``base_layer`` is split like the projection. Of a colwise projection, the
    LoRA ``B`` (rank → outputs) is split colwise and ``A`` stays whole on every rank: ``A``'s output
    is the same everywhere, ``B`` produces this rank's output slice, and the backward all-reduces
    the gradient reaching ``A`` (the colwise layer's input hook). Of a rowwise projection, ``A``
    (inputs → rank) is split rowwise, its partial products all-reduced, and ``B`` stays whole.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict[str, Any] = {}
    modules = dict(layer.named_modules())
    for path in (*COLWISE, *ROWWISE):
        module = modules.get(path)
        if module is None:
            continue
        colwise = path in COLWISE
        style = ColwiseParallel if colwise else RowwiseParallel
        base = getattr(module, "base_layer", None)
        if not isinstance(base, nn.Linear):
            if isinstance(module, nn.Linear):
                plan[path] = style()
            continue
        plan[f"{path}.base_layer"] = style()
        split = getattr(module, "lora_B" if colwise else "lora_A", None)
        if isinstance(split, nn.ModuleDict):
            for adapter in split:
                plan[f"{path}.{'lora_B' if colwise else 'lora_A'}.{adapter}"] = style()
    return plan


def split_heads_problem(layer: nn.Module, degree: int) -> str | None:
    """Why ``degree`` cannot split ``layer``'s attention heads evenly, else None."""
    attention = getattr(layer, "self_attn", None)
    config = getattr(attention, "config", None)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    if heads and (heads % degree or kv_heads % degree):
        return f"{heads} attention heads and {kv_heads} KV heads cannot be split over {degree} ranks"
    return None


def split_layers(loss_module: nn.Module, mesh: Any, strategy: str) -> nn.Module:
    """Splits every decoder layer's projections over the 1-D ``mesh`` (see :func:`layer_plan`).

    Raises:
        CryptotuneError: CONFIG_INVALID when the mesh's size does not divide the attention heads.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    for layer in decoder_layers(loss_module):
        problem = split_heads_problem(layer, mesh.size())
        if problem is not None:
            from cryptotune_daemon.errors import CryptotuneError, ErrorCode

            raise CryptotuneError(ErrorCode.CONFIG_INVALID, f"{strategy}: {problem}")
        parallelize_module(layer, mesh, layer_plan(layer))
    return loss_module


def split_gradient_norm(
    parameters: Iterable[nn.Parameter], dist: DistContext
) -> tuple[list[nn.Parameter], float]:
    """The global L2 norm of the gradients of ``parameters``, however they are split over the ranks.

    Each rank adds the squares of its local gradient values divided by the number of ranks that hold
    the same values, and the sum over all ranks is the square of the norm. A DTensor's values are
    repeated on the ranks outside its mesh (a 1-D DTensor of one dimension of a 2-D mesh is the same
    on every rank of the other) and along the mesh dimensions it is replicated on; a plain tensor
    is the same on every rank.

    Returns:
        The parameters that have gradients and the norm.
    """
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if p.grad is not None]
    total = torch.zeros((), dtype=torch.float64, device=dist.device)
    for param in params:
        grad = param.grad
        assert grad is not None
        if isinstance(grad, DTensor):
            mesh = grad.device_mesh
            replicated = [
                mesh.size(i) for i, placement in enumerate(grad.placements) if placement.is_replicate()
            ]
            copies = dist.world_size // mesh.size() * math.prod(replicated)
            local = grad.to_local()
        else:
            copies, local = dist.world_size, grad
        total += local.double().pow(2).sum() / copies
    dist.all_reduce_sum(total)
    return params, float(total.sqrt())


def scale_gradients(params: Iterable[nn.Parameter], norm: float, max_norm: float) -> None:
    """Clips like ``torch.nn.utils.clip_grad_norm_``: scales every (local) gradient by max_norm / norm."""
    from torch.distributed.tensor import DTensor

    if not math.isfinite(max_norm):
        return
    coefficient = min(max_norm / (norm + 1e-6), 1.0)
    for param in params:
        grad = param.grad
        assert grad is not None
        (grad.to_local() if isinstance(grad, DTensor) else grad).mul_(coefficient)


class TensorParallel(SameSamplesOnEveryRank):
    """Tensor parallelism over every rank (one 1-D ``tp`` mesh).

    q/k/v, gate and up are split colwise and o and down rowwise (DTensor ``parallelize_module``), so
    each rank holds ``heads / degree`` query heads and ``kv_heads / degree`` KV heads and a slice of
    the MLP; the attention reshapes its projections with ``-1`` heads, so it needs no change. The
    embeddings, norms, rotary tables and head stay whole on every rank, and every rank computes the
    same loss on the same samples: the data-parallel degree is 1. The LoRA parameters of the split
    layers are DTensors (see :func:`layer_plan`); checkpoints gather them whole, by name.

    Args:
        dist: this process's place in the job.
    """

    name = "model_parallel"

    def __init__(self, dist: DistContext) -> None:
        super().__init__(dist)
        self._mesh: Any = None

    def mesh(self) -> dict[str, int]:
        return {"tp": self.dist.world_size}

    def optimizer_options(self) -> dict[str, Any]:
        # Whole (plain) and split (DTensor) LoRA parameters cannot share one multi-tensor kernel.
        return {"foreach": False}

    def wrap(self, loss_module: nn.Module) -> nn.Module:
        if not self.dist.distributed:
            return loss_module
        from torch.distributed.device_mesh import init_device_mesh

        degree = self.dist.world_size
        self._mesh = init_device_mesh(self.dist.device.type, (degree,), mesh_dim_names=("tp",))
        return split_layers(loss_module, self._mesh, self.name)

    @contextlib.contextmanager
    def evaluating(self, module: nn.Module) -> Iterator[DistContext | None]:
        """Every rank evaluates every example: the split layers' collectives must pair up."""
        if not self.dist.distributed:
            yield None
            return
        yield DistContext(rank=0, world_size=1, local_rank=self.dist.local_rank, device=self.dist.device)

    def clip_grad_norm(self, parameters: Iterable[nn.Parameter], max_norm: float) -> float:
        """The global norm: split gradients' squares summed over the ranks, whole ones counted once."""
        from torch.distributed.tensor import DTensor

        params = [p for p in parameters if p.grad is not None]
        if not params:
            return 0.0
        device = self.dist.device
        split = torch.zeros((), dtype=torch.float32, device=device)
        whole = torch.zeros((), dtype=torch.float32, device=device)
        for param in params:
            grad = param.grad
            assert grad is not None
            if isinstance(grad, DTensor):
                local = grad.to_local().float()
                if any(p.is_shard() for p in grad.placements):
                    split += local.pow(2).sum()
                else:
                    whole += local.pow(2).sum()
            else:
                whole += grad.float().pow(2).sum()
        self.dist.all_reduce_sum(split)
        norm = float((split + whole).sqrt())
        if math.isfinite(max_norm):
            coefficient = min(max_norm / (norm + 1e-6), 1.0)
            for param in params:
                grad = param.grad
                assert grad is not None
                local_grad = grad.to_local() if isinstance(grad, DTensor) else grad
                local_grad.mul_(coefficient)
        return norm
