"""Pre-flight: before training, prove that the ranks can run a collective, within seconds.

A wrong network interface (NCCL or gloo picking an address the other nodes cannot reach) does not
fail: it hangs in the first collective until the process group's timeout (hours here, 10–30 min by
default). The pre-flight runs the process group's set-up and one all-reduce under a short timeout
(:data:`DEFAULT_TIMEOUT_S`, ``CRYPTOTUNE_PREFLIGHT_TIMEOUT`` seconds to change it) once every rank
has arrived, and fails the job with advice (``NCCL_SOCKET_IFNAME``, ``NCCL_DEBUG=INFO``) instead.

Two guards, because a hung collective cannot always be interrupted from Python:

- the all-reduce runs asynchronously and is waited for with a timeout (:func:`all_reduce_check`):
  a normal exception, so the job fails through the pipeline like any other error;
- a :class:`Watchdog` thread covers what a timeout cannot bound (the NCCL communicator set-up inside
  ``init_process_group``, a wait that does not return): when it expires it hands the message to a
  callback that records the failure and ends the process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "CRYPTOTUNE_PREFLIGHT_TIMEOUT"
# The watchdog fires this much after the all-reduce's own timeout, so the clean path wins the race.
WATCHDOG_GRACE_S = 15.0


class PreflightFailed(CryptotuneError):
    """The ranks could not run a collective in time (or got a wrong result)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.RESOURCE_EXHAUSTED, message)


def preflight_timeout() -> float:
    """The pre-flight's timeout in seconds: ``CRYPTOTUNE_PREFLIGHT_TIMEOUT`` when a positive number."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def network_advice(device_kind: str, what: str, seconds: float, detail: str = "") -> str:
    """The failure message: what did not finish in time and how to find the interface to use."""
    if device_kind == "cuda":
        knobs = (
            "set NCCL_SOCKET_IFNAME (and GLOO_SOCKET_IFNAME) to the network interface the nodes reach "
            "each other on (e.g. NCCL_SOCKET_IFNAME=eth0 — see `ip -br addr` on each node; "
            "NCCL_SOCKET_IFNAME=^docker0,lo excludes interfaces), check that no firewall blocks the ports "
            "between the nodes, and run once with NCCL_DEBUG=INFO to see the interface NCCL picked"
        )
    else:
        knobs = (
            "set GLOO_SOCKET_IFNAME to the network interface the nodes reach each other on (e.g. "
            "GLOO_SOCKET_IFNAME=eth0 — see `ip -br addr` on each node), and check that no firewall "
            "blocks the ports between the nodes"
        )
    suffix = f" ({detail})" if detail else ""
    return (
        f"pre-flight: the ranks could not {what} within {seconds:g} s{suffix}: the network between them "
        f"does not work for training; {knobs}. See docs/multi-node.md (troubleshooting); "
        f"{TIMEOUT_ENV}=SECONDS gives a slow cluster longer"
    )


class Watchdog:
    """Calls ``on_expiry(message)`` from a thread unless the ``with`` block ends within ``seconds``.

    Args:
        seconds: how long the block may take.
        message: what ``on_expiry`` is told.
        on_expiry: records the failure and ends the process (the blocked thread cannot be woken).
    """

    def __init__(self, seconds: float, message: str, on_expiry: Callable[[str], None]) -> None:
        self._timer = threading.Timer(seconds, on_expiry, args=(message,))
        self._timer.daemon = True
        self._timer.name = "cryptotune-preflight-watchdog"

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._timer.cancel()


def all_reduce_check(world_size: int, device: Any, device_kind: str, timeout_s: float) -> None:
    """Sums a one on every rank and checks that the sum is the world size, within ``timeout_s``.

    Raises:
        PreflightFailed: a rank did not take part in time, or the sum is wrong.
    """
    import torch
    import torch.distributed as dist

    value = torch.ones(1, device=device)
    try:
        work = dist.all_reduce(value, async_op=True)
        assert work is not None
        work.wait(timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, dist.DistError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise PreflightFailed(
            network_advice(device_kind, f"all-reduce one number across {world_size} ranks", timeout_s, detail)
        ) from None
    total = float(value.item())
    if total != float(world_size):
        raise PreflightFailed(
            f"pre-flight: an all-reduce over {world_size} ranks summed to {total:g}, not {world_size}: a "
            "rank is in another job's process group or the interconnect corrupts data; check MASTER_ADDR "
            "and MASTER_PORT, and run with NCCL_DEBUG=INFO"
        )
