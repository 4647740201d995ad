"""The inference pool's refusals and its wait for a GPU (no worker process is started here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.gpus import GpuInfo, StaticInventory
from cryptotune_daemon.jobs.model import Job, JobState
from cryptotune_daemon.jobs.model_workers import ChatStatus, InferencePool
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.training.model_request import GenerateParams

PARAMS = GenerateParams(messages=(("user", "hi"),))


def _succeeded(tmp_path: Path) -> Job:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    return Job(
        job_id="j1", pipeline_id="p1", request_id="r", state=JobState.SUCCEEDED, output_dir=str(tmp_path)
    )


def _pool(tmp_path: Path, owners: dict[str, str], max_chats: int = 2) -> InferencePool:
    settings = DaemonSettings(state_dir=tmp_path / "state", listen=(), max_chats=max_chats)
    inventory = StaticInventory([GpuInfo(0, "GPU-0", "H100", 81559, 0)])
    return InferencePool(settings, inventory, owners, lambda: None)


def test_a_chat_waits_and_says_so_while_training_holds_every_gpu(tmp_path: Path) -> None:
    async def first_event() -> object:
        chat = _pool(tmp_path, {"GPU-0": "job-training"}).chat(_succeeded(tmp_path), PARAMS)
        try:
            return await chat.__anext__()
        finally:
            await chat.aclose()

    event = asyncio.run(first_event())
    assert isinstance(event, ChatStatus) and event.state == "queued"
    assert "training holds every GPU" in event.message


def test_chats_over_the_bound_are_refused(tmp_path: Path) -> None:
    async def second_chat() -> None:
        pool = _pool(tmp_path, {"GPU-0": "job-training"}, max_chats=1)
        job = _succeeded(tmp_path)
        waiting = pool.chat(job, PARAMS)
        await waiting.__anext__()  # queued, holding the only chat slot
        try:
            await pool.chat(job, PARAMS).__anext__()
        finally:
            await waiting.aclose()

    with pytest.raises(CryptotuneError) as caught:
        asyncio.run(second_chat())
    assert caught.value.code == ErrorCode.RESOURCE_EXHAUSTED and "--max-chats" in caught.value.message


def test_a_job_without_an_adapter_is_refused_before_anything_loads(tmp_path: Path) -> None:
    job = Job(job_id="j2", pipeline_id="p2", request_id="r", state=JobState.QUEUED, output_dir=str(tmp_path))

    async def chat() -> None:
        await _pool(tmp_path, {}).chat(job, PARAMS).__anext__()

    with pytest.raises(CryptotuneError, match="queued"):
        asyncio.run(chat())
