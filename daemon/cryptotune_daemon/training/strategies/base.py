"""What every parallel strategy provides: wrapping the model, gathering and loading its state by name."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cryptotune_daemon.training.distributed import DistContext

# optimizer.pt written by this module: state and param groups keyed by parameter name, gathered.
OPTIMIZER_FORMAT = "by_name"


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind ``value`` (a DTensor is gathered: every rank of its mesh must call)."""
    gather = getattr(value, "full_tensor", None)
    return gather() if callable(gather) else value


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the trained (LoRA) parameters, in the model's order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class Strategy:
    """Wraps the (peft) model for one way of spreading a job over ranks.

    The trainer calls the same methods whatever the strategy; only these objects know about DDP,
    FSDP2 or device meshes. Checkpoint state leaves a strategy gathered and keyed by parameter name,
    so a checkpoint written under one strategy and world size loads under any other.

    This base is the single-process layout (and the shared helpers); subclasses override what differs.

    Args:
        dist: this process's rank, world size and device.
    """

    name = "data_parallel"
    # Micro-batches each per-device batch is cut into for one pipeline step (pipelined strategies).
    pipeline_micro_batches = 1

    def __init__(self, dist: DistContext) -> None:
        self.dist = dist

    # -- layout ------------------------------------------------------------------------------------------

    @property
    def data_parallel_rank(self) -> int:
        """Which slice of each optimiser step's samples this rank trains on."""
        return self.dist.rank

    @property
    def data_parallel_size(self) -> int:
        """Rank groups that see different samples (the effective batch's multiplier)."""
        return self.dist.world_size

    @property
    def keeps_whole_model(self) -> bool:
        """Whether every rank's model holds whole weights after training (else: load the checkpoint)."""
        return True

    @property
    def replicas(self) -> int:
        """Ranks that see the same samples (tensor or pipeline parallel groups): 1 for DDP and FSDP2."""
        return max(self.dist.world_size // max(self.data_parallel_size, 1), 1)

    @property
    def pipelined(self) -> bool:
        """Whether optimiser steps run through :meth:`pipeline_step` instead of the trainer's own loop."""
        return False

    def mesh(self) -> dict[str, int]:
        """The device mesh, by dimension name (``{"dp": 2}``, ``{"tp": 2, "dp_shard": 2}``)."""
        return {"dp": self.dist.world_size}

    def optimizer_options(self) -> dict[str, Any]:
        """Extra keyword arguments of the AdamW optimiser (e.g. no multi-tensor kernels)."""
        return {}

    # -- model -------------------------------------------------------------------------------------------

    def wrap(self, loss_module: nn.Module) -> nn.Module:
        """The module the trainer calls for loss sums (``loss_module`` wraps the peft model)."""
        return loss_module

    def no_sync(self, module: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Skips gradient synchronisation for a micro-batch that is not the step's last."""
        return contextlib.nullcontext()

    def evaluating(self, module: nn.Module) -> contextlib.AbstractContextManager[DistContext | None]:
        """Around an evaluation of the wrapped ``module``'s model: yields the context to shard the eval
        set with (None: this rank's own), after making the weights usable outside a training step."""
        return contextlib.nullcontext()

    def pipeline_step(
        self,
        batches: Sequence[dict[str, torch.Tensor] | None],
        *,
        pad_token_id: int,
        scale: float,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Forward and backward of one pipeline step of micro-batches (pipelined strategies only)."""
        raise NotImplementedError(f"{self.name} does not run pipeline steps")

    def eval_loss_sums(
        self, autocast: Callable[[], contextlib.AbstractContextManager[Any]], pad_token_id: int
    ) -> Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]] | None:
        """How an eval batch's per-example loss sums are computed, when not by the whole model (else None)."""
        return None

    def clip_grad_norm(self, parameters: Iterable[nn.Parameter], max_norm: float) -> float:
        """Clips gradients to ``max_norm`` (inf: measure only) by their global norm; returns that norm."""
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return 0.0
        grads = [p.grad for p in params if p.grad is not None]
        norm = full_tensor(torch.nn.utils.get_total_norm(grads, 2.0))
        if math.isfinite(max_norm):
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return float(norm)

    # -- state ---------------------------------------------------------------------------------------

    def adapter_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained parameters, whole and on the CPU, by name (every rank must call)."""
        return {n: full_tensor(p.detach()).cpu().clone() for n, p in trainable_parameters(model)}

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimiser's state gathered and keyed by parameter name (every rank must call)."""
        names = {id(p): n for n, p in model.named_parameters()}
        state: dict[str, dict[str, Any]] = {}
        for param, values in optimizer.state.items():
            state[names[id(param)]] = {
                k: full_tensor(v).cpu().clone() if isinstance(v, torch.Tensor) else v
                for k, v in values.items()
            }
        groups = [
            {
                **{k: v for k, v in group.items() if k != "params"},
                "params": [names[id(p)] for p in group["params"]],
            }
            for group in optimizer.param_groups
        ]
        return {"format": OPTIMIZER_FORMAT, "state": state, "param_groups": groups}

    def load_optimizer_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]
    ) -> None:
        """Loads what :meth:`optimizer_state` saved (or an index-keyed state of an older checkpoint)."""
        by_name = dict(model.named_parameters())
        saved = by_name_state(saved, [n for n, _ in trainable_parameters(model)])
        for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=False):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        optimizer.state.clear()
        for name, values in saved["state"].items():
            param = by_name[name]
            optimizer.state[param] = {k: self._like(param, v) for k, v in values.items()}

    def _like(self, param: torch.Tensor, value: Any) -> Any:
        """A saved optimiser value laid out like ``param`` (a DTensor's is distributed like it)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.dim() > 0:
            return distribute_tensor(value.to(self.dist.device), param.device_mesh, param.placements)
        # Scalars (AdamW's step count) stay where the optimiser keeps them: on the CPU.
        return value.to(param.device) if isinstance(value, torch.Tensor) and value.dim() > 0 else value


def by_name_state(saved: Mapping[str, Any], trainable_names: list[str]) -> dict[str, Any]:
    """An optimiser state keyed by parameter name; older checkpoints keyed it by index.

    Args:
        saved: the loaded ``optimizer.pt``.
        trainable_names: the trained parameters' names in the order the optimiser was built with
            (index ``i`` of an older checkpoint is the ``i``-th of them).
    """
    if saved.get("format") == OPTIMIZER_FORMAT:
        return dict(saved)
    state = {trainable_names[int(i)]: dict(values) for i, values in saved.get("state", {}).items()}
    groups = [
        {
            **{k: v for k, v in group.items() if k != "params"},
            "params": [trainable_names[int(i)] for i in group["params"]],
        }
        for group in saved.get("param_groups", [])
    ]
    return {"format": OPTIMIZER_FORMAT, "state": state, "param_groups": groups}


class SameSamplesOnEveryRank(Strategy):
    """The layout of a strategy whose ranks split one model and see the same samples (tensor and
    pipeline parallelism): one data-parallel group, and whole weights only on a single rank."""

    @property
    def data_parallel_rank(self) -> int:
        return 0

    @property
    def data_parallel_size(self) -> int:
        return 1

    @property
    def keeps_whole_model(self) -> bool:
        return not self.dist.distributed
