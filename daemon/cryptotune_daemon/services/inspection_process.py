"""InspectData's helper process: tokenizing needs transformers, which the daemon process never imports.

One spawned process, started on the first inspection and kept for the next ones (it keeps the built
tokenizers warm), runs ``data.inspect.inspect_data`` and hands back the serialized
``InspectDataResponse``. The daemon process only parses those bytes. The helper's modules are
imported by name inside :func:`_inspect_in_helper`, which only the helper runs, so neither Python nor
the import contracts (``make lint``) see the daemon import transformers. A helper that dies (out of
memory on a huge file, say) fails that one call with a clear message; the next call starts a new one.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from cryptotune.proto.v1 import data_pb2
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

HELPER_EXIT_S = 5.0


@dataclass(frozen=True)
class InspectionRequest:
    """One inspection, as the helper process receives it (plain, picklable values)."""

    path: Path
    display_name: str
    file_format: str | None
    sample: int
    max_seq_length: int
    model: str
    tokenizer_name: str
    cache_dir: Path


def _inspect_in_helper(request: InspectionRequest) -> tuple[bytes, str, str]:
    """Runs in the helper process: ``(response bytes, "", "")`` or ``(b"", error code, message)``."""
    inspect = importlib.import_module("cryptotune_daemon.data.inspect")
    tokenizer = importlib.import_module("cryptotune_daemon.data.tokenizer")
    serde = importlib.import_module("cryptotune_daemon.services.serde")
    try:
        report = inspect.inspect_data(
            request.path,
            display_name=request.display_name,
            tokenizer=tokenizer.load_tokenizer(request.model, request.cache_dir),
            file_format=request.file_format,
            sample=request.sample,
            max_seq_length=request.max_seq_length,
            tokenizer_name=request.tokenizer_name,
        )
    except CryptotuneError as error:  # an exception object may not survive pickling: send its parts
        return b"", error.code.value, error.message
    return serde.inspection(report).SerializeToString(), "", ""


class InspectionProcess:
    """The helper process behind InspectData, shared by every listener's DataService."""

    def __init__(self) -> None:
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

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    async def inspect(self, request: InspectionRequest) -> data_pb2.InspectDataResponse:
        """Inspects in the helper process.

        Raises:
            CryptotuneError: the inspection's own error, or RESOURCE_EXHAUSTED when the helper died.
        """
        pool = self._executor()
        try:
            data, code, message = await asyncio.wrap_future(pool.submit(_inspect_in_helper, request))
        except BrokenProcessPool:
            self._discard(pool)
            raise CryptotuneError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"the inspection of {request.display_name} ended its helper process (out of memory?); "
                "try again, or inspect a smaller part of the file",
            ) from None
        if code:
            raise CryptotuneError(ErrorCode(code), message)
        response = data_pb2.InspectDataResponse()
        response.ParseFromString(data)
        return response

    def close(self) -> None:
        """Ends the helper process at once (daemon shutdown), even in the middle of an inspection."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        # The executor has no public way to end a running call; its process table is the only handle.
        helpers = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for helper in helpers:
            helper.terminate()
            helper.join(HELPER_EXIT_S)
