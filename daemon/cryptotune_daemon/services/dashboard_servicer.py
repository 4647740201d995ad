"""DashboardService: one-time login URLs for the daemon's web dashboard."""

from __future__ import annotations

from typing import Any

import grpc

from cryptotune.proto.v1 import dashboard_pb2, dashboard_pb2_grpc
from cryptotune_daemon.jobs.manager import JobManager
from cryptotune_daemon.observability.http_server import HttpFrontend
from cryptotune_daemon.services.error_catalog import unary
from cryptotune_daemon.services.validation import job_ref


class DashboardServicer(dashboard_pb2_grpc.DashboardServiceServicer):
    """Translates DashboardService calls to the HTTP front end's login codes."""

    def __init__(self, jobs: JobManager, frontend: HttpFrontend) -> None:
        self._jobs = jobs
        self._frontend = frontend

    @unary
    async def CreateDashboardLogin(
        self, request: dashboard_pb2.CreateDashboardLoginRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dashboard_pb2.CreateDashboardLoginResponse:
        target = self._jobs.get(job_ref(request.job)).job_id if request.job else ""
        url, ttl = self._frontend.login_url(target)
        return dashboard_pb2.CreateDashboardLoginResponse(url=url, expires_in_seconds=ttl)
