"""ConfigService: template, validation and JSON schema."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

from cryptotune.proto.v1 import config_pb2, config_pb2_grpc
from cryptotune_daemon.config import config_json_schema, config_template, validate_config_text
from cryptotune_daemon.gpus import GpuInventory
from cryptotune_daemon.services import serde
from cryptotune_daemon.services.error_catalog import unary
from cryptotune_daemon.services.validation import config_size

# Validating a config is pure Python and a pathological 1 MiB one takes seconds of CPU: it runs off
# the event loop (other calls keep being served), and only this many at once, so a burst of them
# cannot take every worker thread.
MAX_CONCURRENT_VALIDATIONS = 2


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    """Serves the config template, validation and schema."""

    def __init__(self, inventory: GpuInventory) -> None:
        self._inventory = inventory
        self._validations = asyncio.Semaphore(MAX_CONCURRENT_VALIDATIONS)

    @unary
    async def GetTemplate(
        self, request: config_pb2.GetTemplateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.GetTemplateResponse:
        return config_pb2.GetTemplateResponse(yaml=config_template())

    @unary
    async def ValidateConfig(
        self, request: config_pb2.ValidateConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.ValidateConfigResponse:
        config_size(request.text)
        async with self._validations:
            report = await asyncio.to_thread(self._validate, request.text, request.source_name)
        return serde.config_report(report)

    def _validate(self, text: str, source_name: str) -> Any:
        gpu_count = len(self._inventory.list_gpus())
        return validate_config_text(text, source_name or "config.yaml", gpu_count=gpu_count or None)

    @unary
    async def GetJsonSchema(
        self, request: config_pb2.GetJsonSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.GetJsonSchemaResponse:
        return config_pb2.GetJsonSchemaResponse(json=json.dumps(config_json_schema(), indent=2))
