"""The dashboard's HTTP routes (aiohttp): sign-in, the two pages, their JSON and the event stream.

Read-only: every route is a GET. Pages and JSON need the session cookie that ``/login`` sets in
exchange for a one-time code; the static assets (our script, style sheet and the vendored uPlot) are
public. Nothing is loaded from another origin, and the Content-Security-Policy says so.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.manager import JobManager
from cryptotune_daemon.layout import REPORT_JSON
from cryptotune_daemon.observability.dashboard.views import (
    job_detail,
    job_summary,
    parse_last_event_id,
    sse_frame,
)
from cryptotune_daemon.observability.login import LoginCodes, LoginRefused, Refusal, Sessions
from cryptotune_daemon.observability.metrics import DaemonMetrics

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
# The files /static/ serves (nothing else from the package): name → path inside static/.
STATIC_FILES = {
    "dashboard.js": "dashboard.js",
    "dashboard.css": "dashboard.css",
    "uPlot.iife.min.js": "vendor/uPlot.iife.min.js",
    "uPlot.min.css": "vendor/uPlot.min.css",
    "uPlot-LICENSE.txt": "vendor/uPlot-LICENSE.txt",
}
LOG_TAIL_LINES = 200
MAX_REPORT_BYTES = 4 * 1024 * 1024
SESSION_KEY: web.AppKey[DashboardAuth] = web.AppKey("dashboard_auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class DashboardAuth:
    """The dashboard's sign-in state: the codes issued, the session signer and the cookie."""

    codes: LoginCodes
    sessions: Sessions
    cookie_name: str
    secure: bool


def _static(name: str) -> bytes:
    return resources.files("cryptotune_daemon.observability.dashboard").joinpath("static", name).read_bytes()


def _message_page(status: int, title: str, message: str) -> web.Response:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>cryptotune: "
        f"{html.escape(title)}</title><link rel=stylesheet href=/static/dashboard.css></head><body>"
        f"<main class=message><h1>{html.escape(title)}</h1><p id=message>{html.escape(message)}</p>"
        "</main></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Strict CSP and friends on every answer (errors included)."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        response = error
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    if isinstance(response, web.HTTPException):
        raise response
    return response


class DashboardRoutes:
    """The dashboard's request handlers over the job engine."""

    def __init__(self, jobs: JobManager, auth: DashboardAuth, metrics: DaemonMetrics | None) -> None:
        self._jobs = jobs
        self._auth = auth
        self._metrics = metrics

    def add_to(self, app: web.Application) -> None:
        """Registers every route on ``app``."""
        app.router.add_get("/login", self.login)
        app.router.add_get("/", self._signed_in(self.index_page))
        app.router.add_get("/jobs/{job}", self._signed_in(self.job_page))
        app.router.add_get("/api/jobs", self._signed_in(self.api_jobs))
        app.router.add_get("/api/jobs/{job}", self._signed_in(self.api_job))
        app.router.add_get("/api/jobs/{job}/events", self._signed_in(self.api_events))
        app.router.add_get("/static/{name}", self.static)

    # -- sign-in -----------------------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Trades a one-time code for the session cookie, then redirects to the page it names."""
        try:
            target = self._auth.codes.redeem(request.query.get("code", ""))
        except LoginRefused as refused:
            titles = {
                401: "Login code needed",
                403: "Login code not valid",
                410: "Login code no longer valid",
            }
            status = refused.refusal.status
            return _message_page(status, titles[status], str(refused))
        location = f"/jobs/{target}" if target else "/"
        response = web.HTTPSeeOther(location)
        response.set_cookie(
            self._auth.cookie_name,
            self._auth.sessions.issue(),
            max_age=int(self._auth.sessions.ttl),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._auth.secure,
        )
        return response

    def _signed_in(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if self._auth.sessions.valid(request.cookies.get(self._auth.cookie_name)):
                return await handler(request)
            if request.path.startswith("/api/"):
                return web.json_response(
                    {"error": "not signed in: run `cryptotune dashboard` and open the URL it prints"},
                    status=401,
                )
            return _message_page(401, "Sign in to the cryptotune dashboard", Refusal.MISSING.message)

        return checked

    # -- pages and assets ----------------------------------------------------------------------------------

    async def index_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8")

    async def job_page(self, request: web.Request) -> web.StreamResponse:
        self._job(request)  # an unknown job is a 404 page, not an empty shell
        return web.Response(body=_static("job.html"), content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound(text=f"no static file {name}")
        path = STATIC_FILES[name]
        return web.Response(
            body=_static(path),
            headers={"Content-Type": STATIC_TYPES[Path(path).suffix], "Cache-Control": "max-age=3600"},
        )

    # -- JSON and events -------------------------------------------------------------------------------------

    def _job(self, request: web.Request) -> Any:
        try:
            return self._jobs.get(request.match_info["job"])
        except CryptotuneError as error:
            if error.code == ErrorCode.JOB_NOT_FOUND:
                raise web.HTTPNotFound(text=error.message) from None
            raise

    async def api_jobs(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"jobs": [job_summary(job) for job in self._jobs.list_jobs(100)]})

    async def api_job(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        tail = await asyncio.to_thread(self._jobs.log_tail, job.job_id, LOG_TAIL_LINES)
        return web.json_response(job_detail(job, tail, _read_report(job.output_dir)))

    async def api_events(self, request: web.Request) -> web.StreamResponse:
        """The job's events as Server-Sent Events: stored ones after ``Last-Event-ID`` (or ``?after=``),
        then live ones, from the same store as gRPC ``WatchJob``; ``end`` once the job is finished."""
        job = self._job(request)
        try:
            after = parse_last_event_id(request.headers.get("Last-Event-ID"), request.query.get("after"))
        except ValueError:
            raise web.HTTPBadRequest(
                text="Last-Event-ID and ?after= must be a non-negative integer"
            ) from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        gauge = self._metrics.watch_streams.labels("sse") if self._metrics is not None else None
        if gauge is not None:
            gauge.inc()
        try:
            await response.write(b"retry: 1000\n\n")
            async for event in self._jobs.watch(job.job_id, after):
                await response.write(sse_frame(event))
            await response.write(b"event: end\ndata: {}\n\n")
        except CryptotuneError as error:
            # The daemon is stopping: end the stream; the browser reconnects with Last-Event-ID.
            log.debug("event stream of %s ended: %s", job.job_id, error.message)
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        finally:
            if gauge is not None:
                gauge.dec()
        return response


def _read_report(output_dir: str) -> dict[str, Any] | None:
    path = Path(output_dir) / REPORT_JSON
    try:
        if not output_dir or path.stat().st_size > MAX_REPORT_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
