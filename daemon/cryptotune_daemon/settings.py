"""The daemon's settings, from its command line."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptotune_daemon.faults import NO_FAULTS, FaultInjection

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# `cryptotuned --ray-node-wait-s`: after a job on Ray lost a node, how long it waits for room again.
DEFAULT_RAY_NODE_WAIT_S = 300.0
# `cryptotuned --warm-workers`: worker processes kept ready with torch, transformers and peft imported.
DEFAULT_WARM_WORKERS = 1


@dataclass(frozen=True)
class DaemonSettings:
    """Everything the daemon was told at start-up.

    Attributes:
        state_dir: job store, uploads, caches, default socket.
        listen: gRPC addresses (``unix:///abs/path`` or ``host:port``).
        allow_remote_code: whether configs may set ``model.trust_remote_code``.
        max_upload_bytes: cap on one uploaded data file.
        max_message_bytes: cap on one gRPC message (uploads are streamed in chunks below it).
        allowed_output_roots: job output directories must lie under one of these.
        max_parallel_cpu_jobs: jobs run at once when there is no GPU.
        token_file: bearer token for TCP listeners (default: ``state_dir/auth_token``, created 0600).
        tls_cert: PEM certificate chain for TCP listeners (required off loopback).
        tls_key: PEM private key matching ``tls_cert``.
        tls_client_ca: PEM CA bundle; when set, TCP clients must present a certificate it signed (mTLS).
        max_chats: chats answered at once (each needs an inference worker with its job's model).
        chat_idle_timeout_s: an inference worker nobody used for this long is freed.
        metrics_listen: ``HOST:PORT`` serving Prometheus ``/metrics`` (None: off).
        http_listen: ``HOST:PORT`` serving the web dashboard (None: off).
        faults: test-only faults injected into every job (``--inject-fault``; see faults.py).
        warm_workers: warm worker processes kept ready (``jobs/warm_pool.py``); 0 starts every job
            cold. ``cryptotuned`` defaults to ``DEFAULT_WARM_WORKERS``; a daemon built in process
            (unit tests) to none.
        ray_address: the Ray cluster jobs with ``parallel.nodes`` > 1 run on (``--ray-address``;
            ``auto``: the cluster this machine belongs to); None: such jobs are refused.
        ray_node_wait_s: after a job on Ray lost a node, how long its resume waits for room before
            it fails naming the node.
    """

    state_dir: Path
    listen: tuple[str, ...]
    allow_remote_code: bool = False
    max_upload_bytes: int = 2 * 1024**3
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    allowed_output_roots: tuple[Path, ...] = field(default_factory=tuple)
    max_parallel_cpu_jobs: int = 1
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_chats: int = 2
    chat_idle_timeout_s: float = 300.0
    metrics_listen: str | None = None
    http_listen: str | None = None
    faults: FaultInjection = NO_FAULTS
    warm_workers: int = 0
    ray_address: str | None = None
    ray_node_wait_s: float = DEFAULT_RAY_NODE_WAIT_S

    @property
    def auth_token_path(self) -> Path:
        return self.token_file or self.state_dir / "auth_token"

    @property
    def dashboard_key_path(self) -> Path:
        """The key that signs dashboard session cookies (created 0600; sessions survive restarts)."""
        return self.state_dir / "dashboard_key"

    @property
    def blobs_dir(self) -> Path:
        return self.state_dir / "blobs"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def warm_log_path(self) -> Path:
        """What idle warm workers print (a job's worker prints to the job's log once it has one)."""
        return self.state_dir / "warm_workers.log"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        """Inference workers' logs and requests, and merged exports in progress."""
        return self.state_dir / "models"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    def output_roots(self) -> tuple[Path, ...]:
        """Allowed output roots: the explicit ones, else state dir, home and the temp dir."""
        if self.allowed_output_roots:
            return tuple(p.resolve() for p in self.allowed_output_roots)
        return (self.state_dir.resolve(), Path.home().resolve(), Path(tempfile.gettempdir()).resolve())
