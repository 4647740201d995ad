"""Reads the Ray cluster for the daemon from a helper process, so the daemon process never loads Ray.

One spawned helper, started on the first ``list-gpus`` and kept for the next ones, connects to the
cluster once (``ray.init(address=…)``) and answers each request with a :class:`ClusterView`. A cluster
that does not answer within :data:`READ_TIMEOUT_S` gives a view with no nodes and a note saying so
(``list-gpus`` still lists the local GPUs); a helper that died is replaced on the next call.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from cryptotune_daemon.cluster.inventory import ClusterView
from cryptotune_daemon.gpus import GpuInfo

# Connecting to a cluster takes a second or two; a first call also starts the helper and imports Ray.
READ_TIMEOUT_S = 30.0
HELPER_EXIT_S = 5.0


def _read_in_helper(address: str, local_gpus: list[GpuInfo]) -> ClusterView:
    """Runs in the helper process: connect once (quietly), then read nodes and placement groups."""
    ray: Any = importlib.import_module("ray")
    inventory = importlib.import_module("cryptotune_daemon.cluster.inventory")
    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    view: ClusterView = inventory.read_cluster(local_gpus)
    return view


class ClusterReader:
    """The helper process behind ``list-gpus``'s cluster view.

    Args:
        address: the ``--ray-address`` the daemon was started with (``auto``, ``HOST:PORT``, ``ray://…``).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the daemon holds gRPC threads and an event loop a fork would copy.
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn")
                )
            return self._pool

    async def read(self, local_gpus: list[GpuInfo], timeout_s: float = READ_TIMEOUT_S) -> ClusterView:
        """The cluster's nodes; an empty view with a note when the cluster cannot be read."""
        pool = self._executor()
        future = pool.submit(_read_in_helper, self.address, local_gpus)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            # A helper stuck connecting stays stuck: start afresh next time.
            await asyncio.to_thread(self._close_pool, pool)
            return ClusterView(
                nodes=(),
                note=f"the Ray cluster at {self.address} did not answer within {timeout_s:.0f} s",
            )
        except BrokenProcessPool:
            await asyncio.to_thread(self._close_pool, pool)
            return ClusterView(nodes=(), note=f"reading the Ray cluster at {self.address} ended its helper")
        except Exception as error:  # Ray's connection errors: report, do not fail list-gpus
            await asyncio.to_thread(self._close_pool, pool)
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            return ClusterView(nodes=(), note=f"cannot read the Ray cluster at {self.address}: {first}")

    def _close_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        _end(pool)

    def close(self) -> None:
        """Ends the helper process (daemon shutdown); Ray drops its connection with it."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            _end(pool)


def _end(pool: ProcessPoolExecutor) -> None:
    # The executor has no public way to end a running call; its process table is the only handle.
    helpers = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for helper in helpers:
        helper.terminate()
        helper.join(HELPER_EXIT_S)
