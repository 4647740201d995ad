"""The daemon's Prometheus metrics (``/metrics``): jobs, queue, per-job progress, GPUs, OOM recoveries,
RPCs and open watch streams. Every name starts with ``cryptotune_``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cryptotune_daemon.gpus import GpuInventory
from cryptotune_daemon.jobs.model import Job, JobState
from cryptotune_daemon.jobs.store import JobStore

# A finished job's per-job series stay this long (so a scrape sees its last values), then go away:
# the number of series stays bounded by the jobs running plus those finished recently.
FINISHED_RETENTION_S = 600.0
RECENT_TERMINAL_LIMIT = 100
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def reported_jobs(jobs: Iterable[Job], now: float, retention: float = FINISHED_RETENTION_S) -> list[Job]:
    """The jobs that get per-job series: every unfinished one, and finished ones for ``retention`` s."""
    seen: dict[str, Job] = {}
    for job in jobs:
        if not job.is_terminal or now - job.updated_at <= retention:
            seen.setdefault(job.job_id, job)
    return list(seen.values())


class _StateCollector(Collector):
    """Reads jobs and GPUs at scrape time, so the numbers are never stale."""

    def __init__(self, store: JobStore, inventory: GpuInventory, clock: Callable[[], float]) -> None:
        self._store = store
        self._inventory = inventory
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._store.count_by_state()
        jobs = GaugeMetricFamily("cryptotune_jobs", "Jobs in the daemon's store, by state.", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state.value], count)
        yield jobs
        yield GaugeMetricFamily(
            "cryptotune_queue_length", "Jobs waiting for resources.", value=counts[JobState.QUEUED]
        )
        yield from self._per_job()
        yield from self._gpus()

    def _per_job(self) -> Iterator[GaugeMetricFamily]:
        candidates: list[Job] = [
            *self._store.list_nonterminal(),
            *self._store.list_jobs(
                limit=RECENT_TERMINAL_LIMIT,
                states={JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED},
            ),
        ]
        shown = reported_jobs(candidates, self._clock())
        families = {
            "step": GaugeMetricFamily("cryptotune_job_step", "Optimiser steps done.", labels=["job_id"]),
            "total_steps": GaugeMetricFamily(
                "cryptotune_job_total_steps", "Optimiser steps planned.", labels=["job_id"]
            ),
            "loss": GaugeMetricFamily("cryptotune_job_loss", "Latest training loss.", labels=["job_id"]),
            "tokens_per_second": GaugeMetricFamily(
                "cryptotune_job_tokens_per_second", "Recent training throughput.", labels=["job_id"]
            ),
            "eta_seconds": GaugeMetricFamily(
                "cryptotune_job_eta_seconds", "Estimated seconds to the end of training.", labels=["job_id"]
            ),
        }
        info = GaugeMetricFamily(
            "cryptotune_job_info",
            "1 for each job with per-job series; its pipeline, state and stage as labels.",
            labels=["job_id", "pipeline_id", "state", "stage"],
        )
        for job in shown:
            info.add_metric([job.job_id, job.pipeline_id, job.state.value, job.stage], 1)
            values = job.progress.to_dict()
            for name, family in families.items():
                family.add_metric([job.job_id], float(values[name]))
        yield info
        yield from families.values()

    def _gpus(self) -> Iterator[GaugeMetricFamily]:
        labels = ["gpu", "uuid", "name"]
        used = GaugeMetricFamily("cryptotune_gpu_memory_used_bytes", "GPU memory in use.", labels=labels)
        total = GaugeMetricFamily("cryptotune_gpu_memory_total_bytes", "GPU memory.", labels=labels)
        busy = GaugeMetricFamily(
            "cryptotune_gpu_utilization_ratio",
            "GPU utilisation (0 to 1) over the last sample.",
            labels=labels,
        )
        for gpu in self._inventory.list_gpus():
            key = [str(gpu.index), gpu.uuid, gpu.name]
            if gpu.memory_used_mb >= 0:
                used.add_metric(key, gpu.memory_used_mb * 2**20)
            if gpu.memory_total_mb >= 0:
                total.add_metric(key, gpu.memory_total_mb * 2**20)
            if gpu.utilization_percent >= 0:
                busy.add_metric(key, gpu.utilization_percent / 100)
        yield from (used, total, busy)


class DaemonMetrics:
    """The daemon's metrics registry; the RPC interceptor, the event streams and the job engine's
    event listener update it, the ``/metrics`` endpoint renders it."""

    def __init__(
        self, store: JobStore, inventory: GpuInventory, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "cryptotune_rpc_requests",
            "gRPC calls finished, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "cryptotune_rpc_duration_seconds",
            "gRPC call latency (for streams: how long the stream was open).",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.watch_streams = Gauge(
            "cryptotune_watch_streams",
            "Event streams open now: gRPC WatchJob calls and dashboard pages.",
            ["transport"],
            registry=self.registry,
        )
        for transport in ("grpc", "sse"):
            self.watch_streams.labels(transport)
        self.oom_recoveries = Counter(
            "cryptotune_oom_recoveries",
            "Out-of-memory recoveries reported by jobs since the daemon started.",
            registry=self.registry,
        )
        self.registry.register(_StateCollector(store, inventory, clock))

    def observe_events(self, job_id: str, events: Sequence[tuple[str, Any, float]]) -> None:
        """Counts what the job engine ingested (out-of-memory recoveries)."""
        for event_type, _data, _ts in events:
            if event_type == "oom_recovery":
                self.oom_recoveries.inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
