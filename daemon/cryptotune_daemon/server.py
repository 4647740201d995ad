"""Assembles the gRPC server: services, health, reflection, listeners, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from cryptotune.proto.v1 import (
    config_pb2,
    config_pb2_grpc,
    dashboard_pb2,
    dashboard_pb2_grpc,
    data_pb2,
    data_pb2_grpc,
    gpu_pb2,
    gpu_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
)
from cryptotune_daemon.auth import BearerTokenInterceptor, load_or_create_token
from cryptotune_daemon.cluster.reader import ClusterReader
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.gpus import GpuInventory, NvmlInventory
from cryptotune_daemon.jobs.manager import JobManager
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.observability.dashboard.app import DashboardAuth
from cryptotune_daemon.observability.http_server import HttpFrontend, parse_http_address, tls_context
from cryptotune_daemon.observability.login import LoginCodes, Sessions, cookie_name
from cryptotune_daemon.observability.metrics import DaemonMetrics
from cryptotune_daemon.observability.rpc_metrics import RpcMetricsInterceptor
from cryptotune_daemon.services.config_servicer import ConfigServicer
from cryptotune_daemon.services.dashboard_servicer import DashboardServicer
from cryptotune_daemon.services.data_servicer import DataServicer
from cryptotune_daemon.services.gpu_servicer import GpuServicer
from cryptotune_daemon.services.inspection_process import InspectionProcess
from cryptotune_daemon.services.job_servicer import JobServicer
from cryptotune_daemon.services.request_guard import RequestGuardInterceptor
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore
from cryptotune_daemon.systemd_notify import SystemdNotifier

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    data_pb2.DESCRIPTOR.services_by_name["DataService"].full_name,
    gpu_pb2.DESCRIPTOR.services_by_name["GpuService"].full_name,
    job_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    dashboard_pb2.DESCRIPTOR.services_by_name["DashboardService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)
SHUTDOWN_GRACE_S = 10.0


class StateDirLocked(CryptotuneError):
    """Another daemon already owns this state directory."""


def _unix_path(address: str) -> Path | None:
    return (
        Path(address.removeprefix("unix://").removeprefix("unix:")) if address.startswith("unix:") else None
    )


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class Daemon:
    """One running daemon: owns the state dir (exclusively), the listeners and the services."""

    def __init__(self, settings: DaemonSettings, inventory: GpuInventory | None = None) -> None:
        self.settings = settings
        self.inventory: GpuInventory = inventory or NvmlInventory()
        self.health = HealthServicer()
        self._lock_file: IO[str] | None = None
        self._servers: list[grpc.aio.Server] = []
        self.notifier = SystemdNotifier()
        self._watchdog: asyncio.Task[None] | None = None
        self.blobs: BlobStore | None = None
        self.inspections = InspectionProcess()
        # list-gpus's view of the Ray cluster (--ray-address), read in a helper process.
        self.cluster = ClusterReader(settings.ray_address) if settings.ray_address else None
        self.bound_ports: dict[str, int] = {}
        self.store: JobStore | None = None
        self.jobs: JobManager | None = None
        self.metrics: DaemonMetrics | None = None
        self.http: HttpFrontend | None = None

    def _acquire_state_dir(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = (self.settings.state_dir / "daemon.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StateDirLocked(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"another cryptotuned already uses state dir {self.settings.state_dir}; stop it first "
                "or pass a different --state-dir",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _owners(self) -> dict[str, str]:
        return self.jobs.owners() if self.jobs else {}

    def _create_services(self) -> None:
        self.blobs = BlobStore(self.settings.blobs_dir, self.settings.max_upload_bytes)
        self.store = JobStore(self.settings.db_path)
        self.jobs = JobManager(self.settings, self.store, self.blobs, self.inventory)
        self.metrics = DaemonMetrics(self.store, self.inventory)
        self.jobs.add_event_listener(self.metrics.observe_events)
        self.http = self._http_frontend(self.jobs, self.metrics)

    def _http_frontend(self, jobs: JobManager, metrics: DaemonMetrics) -> HttpFrontend:
        """The /metrics and dashboard listeners the settings ask for (none by default)."""
        settings = self.settings
        metrics_listen = (
            parse_http_address(settings.metrics_listen, "--metrics-listen")
            if settings.metrics_listen
            else None
        )
        http_listen = (
            parse_http_address(settings.http_listen, "--http-listen") if settings.http_listen else None
        )
        tls = None
        if settings.tls_cert is not None and settings.tls_key is not None and (metrics_listen or http_listen):
            try:
                tls = tls_context(str(settings.tls_cert), str(settings.tls_key))
            except (OSError, ValueError) as error:
                raise CryptotuneError(
                    ErrorCode.REQUEST_INVALID, f"cannot load --tls-cert/--tls-key for HTTP: {error}"
                ) from None
        auth = None
        if http_listen is not None:
            key = load_or_create_token(settings.dashboard_key_path).encode()
            auth = DashboardAuth(
                codes=LoginCodes(),
                sessions=Sessions(key),
                cookie_name=cookie_name(str(settings.state_dir)),
                secure=tls is not None,
            )
        token = load_or_create_token(settings.auth_token_path) if metrics_listen is not None else ""
        return HttpFrontend(
            jobs=jobs,
            metrics=metrics,
            metrics_listen=metrics_listen,
            http_listen=http_listen,
            token=token,
            tls=tls,
            auth=auth,
        )

    def _new_server(self, interceptors: list[grpc.aio.ServerInterceptor]) -> grpc.aio.Server:
        """A server with every service; local and TCP listeners get separate servers so that only
        TCP calls need a token (a server interceptor cannot tell which listener a call came from)."""
        assert self.jobs is not None and self.blobs is not None
        assert self.metrics is not None and self.http is not None
        server = grpc.aio.server(
            # Metrics see every call; the guard runs inside authentication: a caller without the
            # token is refused first.
            interceptors=[RpcMetricsInterceptor(self.metrics), *interceptors, RequestGuardInterceptor()],
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        config_pb2_grpc.add_ConfigServiceServicer_to_server(ConfigServicer(self.inventory), server)
        data_pb2_grpc.add_DataServiceServicer_to_server(
            DataServicer(self.blobs, self.settings.cache_dir, self.inspections), server
        )
        gpu_pb2_grpc.add_GpuServiceServicer_to_server(
            GpuServicer(self.inventory, self._owners, self.cluster), server
        )
        job_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self.jobs), server)
        dashboard_pb2_grpc.add_DashboardServiceServicer_to_server(
            DashboardServicer(self.jobs, self.http), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        return server

    def _bind_unix(self, server: grpc.aio.Server, path: Path, address: str) -> None:
        if not path.is_absolute():
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"unix socket path must be absolute: {address}")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            if _socket_answers(path):
                raise CryptotuneError(
                    ErrorCode.RESOURCE_EXHAUSTED, f"something already listens on {path}; is a daemon running?"
                )
            path.unlink()  # a stale socket from a crashed daemon
        server.add_insecure_port(f"unix://{path}")

    def _tls_credentials(self) -> grpc.ServerCredentials | None:
        cert, key, client_ca = self.settings.tls_cert, self.settings.tls_key, self.settings.tls_client_ca
        if cert is None and key is None:
            if client_ca is not None:
                raise CryptotuneError(
                    ErrorCode.REQUEST_INVALID, "--tls-client-ca needs --tls-cert and --tls-key"
                )
            return None
        if cert is None or key is None:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, "--tls-cert and --tls-key go together")
        try:
            pair = (key.read_bytes(), cert.read_bytes())
            ca = client_ca.read_bytes() if client_ca is not None else None
        except OSError as error:
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID, f"cannot read TLS file {error.filename}: {error.strerror}"
            ) from None
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

    def _bind_tcp(self, server: grpc.aio.Server, address: str, tls: grpc.ServerCredentials | None) -> None:
        host = address.rsplit(":", 1)[0].strip("[]")
        loopback = host in ("127.0.0.1", "localhost", "::1")
        if not loopback and tls is None:
            raise CryptotuneError(
                ErrorCode.PATH_NOT_ALLOWED,
                f"refusing to listen on {address} without TLS: a non-loopback TCP listener needs "
                "--tls-cert and --tls-key (and the token every client must send)",
            )
        port = server.add_secure_port(address, tls) if tls is not None else server.add_insecure_port(address)
        if port == 0:
            raise CryptotuneError(
                ErrorCode.RESOURCE_EXHAUSTED, f"cannot listen on {address}: address in use?"
            )
        self.bound_ports[address] = port
        log.info("TCP listener %s bound to port %d (token required%s)", address, port, ", TLS" if tls else "")

    async def start(self) -> None:
        """Locks the state dir, binds every listener and starts serving."""
        self._acquire_state_dir()
        self._create_services()
        unix = [(a, p) for a in self.settings.listen if (p := _unix_path(a)) is not None]
        tcp = [a for a in self.settings.listen if _unix_path(a) is None]
        if unix:
            local = self._new_server([])
            for address, path in unix:
                self._bind_unix(local, path, address)
            self._servers.append(local)
        if tcp:
            tls = self._tls_credentials()
            token = load_or_create_token(self.settings.auth_token_path)
            remote = self._new_server([BearerTokenInterceptor(token)])
            for address in tcp:
                self._bind_tcp(remote, address, tls)
            self._servers.append(remote)
        # Health stays NOT_SERVING until jobs left by a previous daemon are reconciled.
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        for server in self._servers:
            await server.start()
        for _, path in unix:
            # 0660: the owner and its group may connect; others may not.
            os.chmod(path, 0o660)
        assert self.jobs is not None and self.http is not None
        await self.jobs.start()
        await self.http.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.notifier.notify("READY=1\nSTATUS=serving")
        self._watchdog = self.notifier.start_watchdog()
        log.info(
            "cryptotuned serving on %s (state dir %s)",
            ", ".join(self.settings.listen),
            self.settings.state_dir,
        )

    async def stop(self) -> None:
        """Stops accepting calls, lets running ones finish (bounded), releases the state dir."""
        if not self._servers:
            return
        self.notifier.notify("STOPPING=1\nSTATUS=stopping")
        await self.health.enter_graceful_shutdown()
        await self.notifier.stop_task(self._watchdog)
        if self.jobs is not None:
            await self.jobs.stop()
        if self.http is not None:
            await self.http.stop()
        await asyncio.gather(*(server.stop(SHUTDOWN_GRACE_S) for server in self._servers))
        self._servers.clear()
        if self.store is not None:
            self.store.close()
        await asyncio.to_thread(self.inspections.close)
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.close)
        for address in self.settings.listen:
            path = _unix_path(address)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        log.info("cryptotuned stopped")

    async def run_until_signalled(self) -> None:
        """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: shutting down")
        await self.stop()
