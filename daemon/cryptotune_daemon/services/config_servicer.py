"""ConfigService: template, validation and JSON schema."""

from __future__ import annotations

import json
from typing import Any

import grpc

from cryptotune.proto.v1 import config_pb2, config_pb2_grpc
from cryptotune_daemon.config import config_json_schema, config_template, validate_config_text
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.gpus import GpuInventory
from cryptotune_daemon.services import serde
from cryptotune_daemon.services.error_catalog import unary

MAX_CONFIG_BYTES = 1024 * 1024


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    """Serves the config template, validation and schema."""

    def __init__(self, inventory: GpuInventory) -> None:
        self._inventory = inventory

    @unary
    async def GetTemplate(
        self, request: config_pb2.GetTemplateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.GetTemplateResponse:
        return config_pb2.GetTemplateResponse(yaml=config_template())

    @unary
    async def ValidateConfig(
        self, request: config_pb2.ValidateConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.ValidateConfigResponse:
        if len(request.text.encode()) > MAX_CONFIG_BYTES:
            raise CryptotuneError(
                ErrorCode.RESOURCE_EXHAUSTED, f"config larger than {MAX_CONFIG_BYTES // 1024} KiB"
            )
        gpu_count = len(self._inventory.list_gpus())
        report = validate_config_text(
            request.text, request.source_name or "config.yaml", gpu_count=gpu_count or None
        )
        return serde.config_report(report)

    @unary
    async def GetJsonSchema(
        self, request: config_pb2.GetJsonSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.GetJsonSchemaResponse:
        return config_pb2.GetJsonSchemaResponse(json=json.dumps(config_json_schema(), indent=2))
