"""Decisions about serving a job's model (pure functions): may it be served, on which device, with what
sampling settings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.model import Job, JobState
from cryptotune_daemon.layout import ADAPTER_DIR
from cryptotune_daemon.training.model_request import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    MAX_NEW_TOKENS_LIMIT,
    GenerateParams,
)

CHAT_OWNER_PREFIX = "chat:"  # how a GPU held by an inference worker shows in the owner map
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 1000
ROLES = ("user", "assistant")
MAX_MESSAGES = 200


def adapter_of(job: Job, action: str) -> Path:
    """The job's adapter directory, when the job has one to ``action`` (chat with, export).

    Raises:
        CryptotuneError: JOB_STATE_CONFLICT naming why there is no adapter (a dry run, a job that
            has not succeeded, a moved output dir).
    """
    if job.dry_run:
        raise CryptotuneError(
            ErrorCode.JOB_STATE_CONFLICT,
            f"cannot {action} job {job.pipeline_id}: it is a dry run, which trains no adapter",
        )
    if job.state != JobState.SUCCEEDED:
        why = {
            JobState.QUEUED: "it is queued and has not trained yet",
            JobState.RUNNING: "it is still training",
            JobState.RECOVERING: "it is still training (recovering)",
            JobState.CANCELLING: "it is being cancelled",
            JobState.CANCELLED: "it was cancelled before it finished",
            JobState.FAILED: f"it failed ({job.failure_reason or 'no reason recorded'})",
        }.get(job.state, f"it is {job.state.value}")
        raise CryptotuneError(
            ErrorCode.JOB_STATE_CONFLICT,
            f"cannot {action} job {job.pipeline_id}: {why}, so it has no adapter",
        )
    adapter = Path(job.output_dir) / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise CryptotuneError(
            ErrorCode.JOB_STATE_CONFLICT,
            f"cannot {action} job {job.pipeline_id}: {adapter} holds no adapter; was the output dir moved?",
        )
    return adapter


@dataclass(frozen=True)
class Placement:
    """Where an inference worker runs: ``cpu``, ``gpu`` (``gpu_uuid``) or ``wait`` (every GPU is taken)."""

    kind: str
    gpu_uuid: str = ""


def choose_placement(gpu_uuids: Sequence[str], owners: Mapping[str, str]) -> Placement:
    """A free GPU, else the CPU on a machine without GPUs; with GPUs all in use, wait for one.

    Args:
        gpu_uuids: the machine's GPUs.
        owners: GPU uuid → the job (or chat) holding it.
    """
    if not gpu_uuids:
        return Placement("cpu")
    for uuid in gpu_uuids:
        if uuid not in owners:
            return Placement("gpu", uuid)
    return Placement("wait")


def _bounded(value: float, name: str, low: float, high: float, low_open: bool = False) -> float:
    if math.isnan(value) or value < low or value > high or (low_open and value == low):  # NaN too
        bracket = "(" if low_open else "["
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"{name} must be in {bracket}{low:g}, {high:g}]; got {value:g}"
        )
    return value


def generate_params(
    messages: Sequence[tuple[str, str]],
    *,
    max_new_tokens: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    compare: bool = False,
) -> GenerateParams:
    """Checks a chat request and fills in the model card's defaults.

    Raises:
        CryptotuneError: REQUEST_INVALID naming the bad setting.
    """
    if not messages:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, "a chat needs at least one user message")
    if len(messages) > MAX_MESSAGES:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"a chat holds at most {MAX_MESSAGES} messages")
    for index, (role, content) in enumerate(messages):
        if role not in ROLES:
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID,
                f"message {index + 1}: role must be user or assistant, got '{role}'",
            )
        if role == "user" and not content.strip():
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID, f"message {index + 1}: the user message is empty"
            )
    if messages[-1][0] != "user":
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, "the last message must be the user's")
    if max_new_tokens < 0 or max_new_tokens > MAX_NEW_TOKENS_LIMIT:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}]; got {max_new_tokens}",
        )
    k = DEFAULT_TOP_K if top_k is None else top_k
    if k < 0 or k > MAX_TOP_K:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"top_k must be in [0, {MAX_TOP_K}]; got {k}")
    if seed is not None and seed < 0:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"seed must be ≥ 0; got {seed}")
    return GenerateParams(
        messages=tuple(messages),
        max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        temperature=_bounded(
            DEFAULT_TEMPERATURE if temperature is None else temperature, "temperature", 0.0, MAX_TEMPERATURE
        ),
        top_p=_bounded(DEFAULT_TOP_P if top_p is None else top_p, "top_p", 0.0, 1.0, low_open=True),
        top_k=k,
        seed=seed,
        compare=compare,
    )
