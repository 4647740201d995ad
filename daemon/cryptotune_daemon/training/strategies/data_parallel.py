"""``data_parallel``: DDP, every rank holding the whole model and the LoRA gradients all-reduced."""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn

from cryptotune_daemon.training.strategies.base import Strategy


class DataParallel(Strategy):
    """DDP over all ranks (a single process trains unwrapped).

    Every rank builds identical base weights and buffers (rotary tables), so only the LoRA
    parameters are registered with DDP; the frozen rest stays out of its broadcasts and buckets.
    """

    name = "data_parallel"

    def wrap(self, loss_module: nn.Module) -> nn.Module:
        if not self.dist.distributed:
            return loss_module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        frozen = [n for n, p in loss_module.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in loss_module.named_buffers()]
        ddp: Any = DistributedDataParallel  # the classmethod is untyped
        ddp._set_params_and_buffers_to_ignore_for_model(loss_module, frozen)
        return DistributedDataParallel(loss_module, device_ids=device_ids)

    def no_sync(self, module: nn.Module) -> contextlib.AbstractContextManager[Any]:
        no_sync = getattr(module, "no_sync", None)
        return no_sync() if callable(no_sync) else contextlib.nullcontext()
