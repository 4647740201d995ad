"""Pure decisions about serving a job's model: who may chat, where the model runs, sampling settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.chat_policy import Placement, adapter_of, choose_placement, generate_params
from cryptotune_daemon.jobs.model import Job, JobState


def _job(tmp_path: Path, state: JobState, *, dry_run: bool = False, adapter: bool = True) -> Job:
    if adapter:
        (tmp_path / "adapter").mkdir(exist_ok=True)
        (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    return Job(
        job_id="j1",
        pipeline_id="p1",
        request_id="r",
        state=state,
        output_dir=str(tmp_path),
        dry_run=dry_run,
        failure_reason="boom" if state == JobState.FAILED else "",
    )


@pytest.mark.parametrize(
    ("state", "dry_run", "words"),
    [
        (JobState.QUEUED, False, "queued"),
        (JobState.RUNNING, False, "still training"),
        (JobState.FAILED, False, "failed (boom)"),
        (JobState.CANCELLED, False, "cancelled"),
        (JobState.SUCCEEDED, True, "dry run"),
    ],
)
def test_jobs_without_an_adapter_are_refused_with_the_reason(
    tmp_path: Path, state: JobState, dry_run: bool, words: str
) -> None:
    with pytest.raises(CryptotuneError) as caught:
        adapter_of(_job(tmp_path, state, dry_run=dry_run), "chat with")
    assert caught.value.code == ErrorCode.JOB_STATE_CONFLICT
    assert words in caught.value.message and "p1" in caught.value.message


def test_a_succeeded_job_has_its_adapter(tmp_path: Path) -> None:
    assert adapter_of(_job(tmp_path, JobState.SUCCEEDED), "chat with") == tmp_path / "adapter"
    with pytest.raises(CryptotuneError, match="moved"):
        adapter_of(_job(tmp_path / "x", JobState.SUCCEEDED, adapter=False), "export")


def test_placement_takes_a_free_gpu_else_waits_and_uses_the_cpu_without_gpus() -> None:
    assert choose_placement([], {}) == Placement("cpu")
    assert choose_placement(["g0", "g1"], {"g0": "job-1"}) == Placement("gpu", "g1")
    assert choose_placement(["g0"], {"g0": "job-1"}) == Placement("wait")


def test_sampling_defaults_are_the_model_cards() -> None:
    params = generate_params([("user", "hi")])
    assert (params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (0.6, 0.95, 20, 1024)
    greedy = generate_params([("user", "hi")], temperature=0.0, top_k=0, seed=3, max_new_tokens=5)
    assert (greedy.temperature, greedy.top_k, greedy.seed, greedy.max_new_tokens) == (0.0, 0, 3, 5)


@pytest.mark.parametrize(
    ("messages", "settings", "words"),
    [
        ([], {}, "at least one"),
        ([("system", "x")], {}, "role"),
        ([("user", "q"), ("assistant", "a")], {}, "last message"),
        ([("user", "  ")], {}, "empty"),
        ([("user", "q")], {"temperature": -1.0}, "temperature"),
        ([("user", "q")], {"temperature": float("nan")}, "temperature"),
        ([("user", "q")], {"top_p": 0.0}, "top_p"),
        ([("user", "q")], {"top_k": -2}, "top_k"),
        ([("user", "q")], {"max_new_tokens": 10**6}, "max_new_tokens"),
        ([("user", "q")], {"seed": -1}, "seed"),
    ],
)
def test_bad_chat_requests_are_refused(messages: list[tuple[str, str]], settings: dict, words: str) -> None:
    with pytest.raises(CryptotuneError) as caught:
        generate_params(messages, **settings)
    assert caught.value.code == ErrorCode.REQUEST_INVALID and words in caught.value.message
