"""The process's place in a (possibly single-process) data-parallel run, and the collectives used."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Generation on large eval samples can keep ranks apart for a long time; the default is 10–30 min.
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and device of this process.

    Attributes:
        rank: global rank (0 writes files and events).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the torch device this rank trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over ranks in place (no-op for one process) and returns it."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (what the other ranks pass is ignored)."""
        if not self.distributed:
            return value
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        """Waits for every rank."""
        if self.distributed:
            dist.barrier()


def env_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (0, 1, 0 when absent)."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def cpu_threads_per_rank() -> int:
    """Torch threads of one CPU rank: ``OMP_NUM_THREADS`` when set (a positive integer), else 1."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(configured) if configured.isdigit() and int(configured) > 0 else 1


def _exit_failed(message: str) -> None:
    """The pre-flight watchdog's default: say why on stderr (the job's log) and end the process."""
    print(f"cryptotune worker: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def _arrive(world_size: int) -> Any:
    """Rendezvous (``env://``: torchrun's or MASTER_ADDR/MASTER_PORT) and wait until every rank has
    arrived, however long the slowest takes to get here; returns the store the group will use."""
    from torch.distributed.rendezvous import rendezvous

    store, _rank, _world = next(rendezvous("env://", timeout=PROCESS_GROUP_TIMEOUT))
    store.set_timeout(PROCESS_GROUP_TIMEOUT)
    key = f"cryptotune/preflight/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if store.add(f"{key}/arrived", 1) == world_size:
        store.set(f"{key}/all", "1")
    store.wait([f"{key}/all"])
    return store


def init_distributed(
    device_kind: str, *, preflight: bool = False, on_preflight_hang: Callable[[str], None] | None = None
) -> DistContext:
    """Joins the process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA) and picks the device.

    Args:
        device_kind: ``cpu`` or ``cuda``.
        preflight: once every rank has arrived, set the group up and all-reduce once under a short
            timeout (:mod:`~cryptotune_daemon.training.preflight`), so a network the ranks cannot
            use fails in seconds with advice instead of hanging in the first collective.
        on_preflight_hang: called with the advice when the set-up itself hangs (it cannot be
            interrupted); it must record the failure and end the process. Default: print and exit 1.

    Raises:
        PreflightFailed: the pre-flight all-reduce did not finish in time.
    """
    rank, world_size, local_rank = env_rank()
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        if world_size > 1:
            # Ranks share the machine's cores: one thread each unless OMP_NUM_THREADS says otherwise.
            torch.set_num_threads(cpu_threads_per_rank())
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device_kind == "cuda" else {}
        if preflight:
            from cryptotune_daemon.training.preflight import (
                WATCHDOG_GRACE_S,
                Watchdog,
                all_reduce_check,
                network_advice,
                preflight_timeout,
            )

            store = _arrive(world_size)
            seconds = preflight_timeout()
            limit = seconds + WATCHDOG_GRACE_S
            what = f"set up the process group ({backend}) and all-reduce across {world_size} ranks"
            with Watchdog(limit, network_advice(device_kind, what, limit), on_preflight_hang or _exit_failed):
                dist.init_process_group(
                    backend=backend,
                    store=store,
                    rank=rank,
                    world_size=world_size,
                    timeout=PROCESS_GROUP_TIMEOUT,
                    **kwargs,
                )
                all_reduce_check(world_size, device, device_kind, seconds)
        else:
            dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT, **kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    """Leaves the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
