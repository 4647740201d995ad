"""The daemon's HTTP listeners: ``/metrics`` (``--metrics-listen``) and the dashboard (``--http-listen``).

Both run on the daemon's asyncio loop (aiohttp). On loopback, ``/metrics`` is open to local scrapers;
on any other interface every listener needs TLS (the daemon's ``--tls-cert``), and ``/metrics`` the
same bearer token as the gRPC API. The dashboard signs browsers in with one-time codes instead.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.manager import JobManager
from cryptotune_daemon.observability.dashboard.app import (
    DashboardAuth,
    DashboardRoutes,
    Handler,
    security_headers,
)
from cryptotune_daemon.observability.metrics import DaemonMetrics

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
DEFAULT_HOST = "127.0.0.1"  # a bare port listens on loopback only
METRICS_DENIED = "missing or wrong token: send 'Authorization: Bearer TOKEN' (the daemon's auth_token)\n"


@dataclass(frozen=True)
class HttpAddress:
    """A ``HOST:PORT`` to listen on (port 0: any free port)."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether only this machine can connect."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_http_address(text: str, option: str) -> HttpAddress:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6); ``PORT`` or ``:PORT`` alone means loopback (127.0.0.1).

    Raises:
        CryptotuneError: REQUEST_INVALID naming ``option`` when ``text`` is not HOST:PORT.
    """
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or int(port) > 65535:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"{option} takes HOST:PORT such as 127.0.0.1:8787 (port 0 picks a free one), got {text!r}",
        )
    return HttpAddress(host, int(port))


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context for the HTTP listeners (the same certificate as the gRPC listeners)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class HttpFrontend:
    """Starts and stops the HTTP listeners; builds the dashboard's login URLs."""

    def __init__(
        self,
        *,
        jobs: JobManager,
        metrics: DaemonMetrics,
        metrics_listen: HttpAddress | None,
        http_listen: HttpAddress | None,
        token: str,
        tls: ssl.SSLContext | None,
        auth: DashboardAuth | None,
    ) -> None:
        self._jobs = jobs
        self._metrics = metrics
        self._metrics_listen = metrics_listen
        self._http_listen = http_listen
        self._expected = f"Bearer {token}".encode()
        self._tls = tls
        self._auth = auth
        self._runners: list[web.AppRunner] = []
        self.bound: dict[HttpAddress, int] = {}
        # Refused before anything starts listening.
        if metrics_listen is not None:
            self._check_exposure(metrics_listen, "--metrics-listen")
        if http_listen is not None:
            self._check_exposure(http_listen, "--http-listen")

    def _check_exposure(self, address: HttpAddress, option: str) -> None:
        if not address.loopback and self._tls is None:
            raise CryptotuneError(
                ErrorCode.PATH_NOT_ALLOWED,
                f"refusing to serve {option} {address} without TLS: a non-loopback listener needs "
                "--tls-cert and --tls-key (and /metrics the daemon's token)",
            )

    def _app(self, metrics: bool, dashboard: bool, metrics_auth: bool) -> web.Application:
        app = web.Application(middlewares=[security_headers])
        if metrics:
            app.router.add_get("/metrics", self._metrics_handler(metrics_auth))
        if dashboard:
            assert self._auth is not None
            DashboardRoutes(self._jobs, self._auth, self._metrics).add_to(app)
        return app

    def _metrics_handler(self, need_token: bool) -> Handler:
        async def scrape(request: web.Request) -> web.StreamResponse:
            if need_token:
                supplied = request.headers.get("Authorization", "").encode()
                if not hmac.compare_digest(supplied, self._expected):
                    return web.Response(
                        status=401,
                        text=METRICS_DENIED,
                        headers={"WWW-Authenticate": 'Bearer realm="cryptotune"'},
                    )
            body = await asyncio.to_thread(self._metrics.exposition)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        return scrape

    async def start(self) -> None:
        """Binds every listener.

        Raises:
            CryptotuneError: PATH_NOT_ALLOWED off loopback without TLS; RESOURCE_EXHAUSTED when an
                address cannot be bound.
        """
        plan: dict[HttpAddress, tuple[bool, bool]] = {}
        if self._metrics_listen is not None:
            plan[self._metrics_listen] = (True, False)
        if self._http_listen is not None:
            metrics, _ = plan.get(self._http_listen, (False, False))
            plan[self._http_listen] = (metrics, True)
        for address, (metrics, dashboard) in plan.items():
            runner = web.AppRunner(
                self._app(metrics, dashboard, metrics_auth=not address.loopback),
                access_log=None,  # URLs carry one-time login codes: keep them out of logs
                handle_signals=False,
                shutdown_timeout=SHUTDOWN_GRACE_S,
            )
            await runner.setup()
            self._runners.append(runner)
            site = web.TCPSite(runner, address.host, address.port, ssl_context=self._tls, reuse_address=True)
            try:
                await site.start()
            except OSError as error:
                raise CryptotuneError(
                    ErrorCode.RESOURCE_EXHAUSTED, f"cannot listen on {address}: {error.strerror}"
                ) from None
            bound = [a for a in runner.addresses if isinstance(a, tuple)]
            self.bound[address] = int(bound[-1][1]) if bound else address.port
            what = " and ".join(n for n, on in (("/metrics", metrics), ("the dashboard", dashboard)) if on)
            log.info("HTTP listener %s (port %d) serves %s", address, self.bound[address], what)

    async def stop(self) -> None:
        """Closes every listener (open event streams end; browsers reconnect to the next daemon)."""
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def login_url(self, target: str) -> tuple[str, float]:
        """A one-time login URL opening ``target``'s page (``""``: the jobs list), and its lifetime.

        Raises:
            CryptotuneError: DASHBOARD_DISABLED when the daemon serves no dashboard.
        """
        if self._auth is None or self._http_listen is None:
            raise CryptotuneError(
                ErrorCode.DASHBOARD_DISABLED,
                "this daemon serves no dashboard: start cryptotuned with --http-listen 127.0.0.1:8787 "
                "(or another HOST:PORT)",
            )
        address = self._http_listen
        host = address.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        shown = f"[{host}]" if ":" in host else host
        port = self.bound.get(address, address.port)
        scheme = "https" if self._tls is not None else "http"
        code = self._auth.codes.issue(target)
        return f"{scheme}://{shown}:{port}/login?code={code}", self._auth.codes.ttl
