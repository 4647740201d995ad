"""DataService: content-addressed uploads and data inspection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from cryptotune.proto.v1 import data_pb2, data_pb2_grpc
from cryptotune_daemon.constants import BUILTIN_TINY_QWEN3, DEFAULT_MAX_SEQ_LENGTH, MAX_SEQ_LENGTH
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.services import serde
from cryptotune_daemon.services.error_catalog import unary
from cryptotune_daemon.services.validation import MODEL_HINT, int_range, path_text, shown
from cryptotune_daemon.storage.blobs import BlobStore

MAX_SAMPLES_SHOWN = 1000


class DataServicer(data_pb2_grpc.DataServiceServicer):
    """Receives uploads and inspects stored data files."""

    def __init__(self, blobs: BlobStore, cache_dir: Path) -> None:
        self._blobs = blobs
        self._cache_dir = cache_dir

    @unary
    async def Upload(
        self,
        request_iterator: AsyncIterator[data_pb2.UploadChunk],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> data_pb2.UploadResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            what = "was empty" if first is None else "started without one"
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID,
                f"an upload must start with its header message (display_name, size, sha256); this one {what}",
            )
        header = first.header
        with self._blobs.writer(header.size, header.sha256) as writer:
            async for chunk in request_iterator:
                part = chunk.WhichOneof("part")
                if part == "header":
                    raise CryptotuneError(
                        ErrorCode.REQUEST_INVALID,
                        "an upload has one header, in its first message; send the file's bytes in data "
                        "messages after it",
                    )
                if part is None:
                    raise CryptotuneError(
                        ErrorCode.REQUEST_INVALID,
                        "an upload message carried neither a header nor data; after the header, every "
                        "message must carry data",
                    )
                writer.write(chunk.data)
            stored = await asyncio.to_thread(writer.commit)
        return data_pb2.UploadResponse(
            digest=stored.digest, size=stored.size, deduplicated=stored.deduplicated
        )

    @unary
    async def StatBlob(
        self, request: data_pb2.StatBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> data_pb2.StatBlobResponse:
        blob = self._blobs.stat(request.digest)
        return data_pb2.StatBlobResponse(exists=blob is not None, size=blob.size if blob else 0)

    @unary
    async def InspectData(
        self, request: data_pb2.InspectDataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> data_pb2.InspectDataResponse:
        if request.format not in ("", "json", "jsonl"):
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID,
                f"format must be 'json' or 'jsonl' (or empty to detect it), got {shown(request.format)}",
            )
        int_range(request.sample, "sample", 0, MAX_SAMPLES_SHOWN, "records shown with their training text")
        int_range(
            request.max_seq_length,
            "max_seq_length",
            0,
            MAX_SEQ_LENGTH,
            f"0 means the default, {DEFAULT_MAX_SEQ_LENGTH}",
        )
        path_text(request.model, "model", MODEL_HINT)
        blob = self._blobs.get(request.digest)
        report = await asyncio.to_thread(
            self._inspect,
            blob.path,
            request.display_name or blob.digest[:12],
            request.format or None,
            request.sample,
            request.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
            request.model,
        )
        return serde.inspection(report)

    def _inspect(
        self, path: Path, name: str, file_format: str | None, sample: int, max_len: int, model: str
    ) -> Any:
        # Imported lazily: transformers takes seconds to import and most RPCs never need it.
        from cryptotune_daemon.data.inspect import inspect_data
        from cryptotune_daemon.data.tokenizer import load_tokenizer

        model_name = model or BUILTIN_TINY_QWEN3
        tokenizer = load_tokenizer(model_name, self._cache_dir)
        return inspect_data(
            path,
            display_name=name,
            tokenizer=tokenizer,
            file_format=file_format,
            sample=sample,
            max_seq_length=max_len,
            tokenizer_name=model or "qwen3",
        )
