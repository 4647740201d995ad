"""Out-of-memory recovery decisions: the halved split, the injected oom fault and the relaunch request."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.faults import FaultInjection, OomTestHook
from cryptotune_daemon.training.oom import (
    halved_settings,
    relaunch_request,
)
from cryptotune_daemon.training.oom_relaunch import (
    REQUEST_FILE,
    OomRelaunchRequest,
    clear_request,
    read_request,
    write_request,
)
from cryptotune_daemon.training.trainer import TrainingOutOfMemory
from cryptotune_daemon.worker.spec import parse_spec
from tests.helpers.pipeline import make_spec
from tests.helpers.trainer import settings


def test_halving_keeps_the_samples_per_step() -> None:
    for (micro, accumulation), expected in {
        (8, 1): (4, 2),
        (4, 3): (2, 6),
        (6, 1): (3, 2),
        (5, 2): (2, 5),  # the largest divisor of 10 not above 2
        (3, 1): (1, 3),
    }.items():
        halved = halved_settings(settings(micro_batch_size=micro, gradient_accumulation_steps=accumulation))
        assert halved is not None
        assert (halved.micro_batch_size, halved.gradient_accumulation_steps) == expected
        assert halved.samples_per_step == micro * accumulation
    assert halved_settings(settings(micro_batch_size=1, gradient_accumulation_steps=4)) is None


def test_the_injected_oom_fails_only_its_step_rank_and_larger_micro_batches() -> None:
    assert FaultInjection.parse([]).oom is None
    assert FaultInjection.parse(["oom=3:1"]).oom == OomTestHook(at_step=3, fits_micro_batch=1)
    assert FaultInjection.parse(["oom=5"]).oom == OomTestHook(at_step=5, fits_micro_batch=0)
    with pytest.raises(CryptotuneError):
        FaultInjection.parse(["oom=soon"])
    hook = OomTestHook(at_step=3, fits_micro_batch=2)
    assert not hook.fails(3, 2) and not hook.fails(2, 8)
    assert hook.fails(3, 4)
    one_rank = FaultInjection.parse(["oom=3:1:1"]).oom
    assert one_rank == OomTestHook(at_step=3, fits_micro_batch=1, rank=1)
    assert not one_rank.fails(3, 4, rank=0)
    assert one_rank.fails(3, 4, rank=1)


def test_a_rank_asks_for_the_halved_split_or_for_nothing_at_micro_batch_one(tmp_path: Path) -> None:
    error = TrainingOutOfMemory(step=5, micro_batch_size=4, gradient_checkpointing=False)
    request = relaunch_request(error, settings(micro_batch_size=4, gradient_accumulation_steps=2), rank=3)
    assert (request.step, request.rank, request.new_micro_batch, request.new_accumulation) == (5, 3, 2, 4)
    assert request.can_continue and request.message.endswith("(in process 3)")
    assert read_request(tmp_path) is None
    write_request(tmp_path, request)
    assert read_request(tmp_path) == request
    assert [p.name for p in tmp_path.iterdir()] == [REQUEST_FILE], "written atomically, no temp left"
    clear_request(tmp_path)
    assert read_request(tmp_path) is None

    floor = TrainingOutOfMemory(step=5, micro_batch_size=1, gradient_checkpointing=True)
    last = relaunch_request(floor, settings(micro_batch_size=1, gradient_accumulation_steps=8), rank=0)
    assert not last.can_continue and last.message.startswith("OOM at step 5 with micro-batch 1")


def test_a_malformed_request_is_an_error_not_a_relaunch(tmp_path: Path) -> None:
    (tmp_path / REQUEST_FILE).write_text('{"step": "three"}')
    with pytest.raises(ValueError, match="malformed"):
        read_request(tmp_path)
    with pytest.raises(ValueError):
        OomRelaunchRequest.from_json([1, 2])


def test_the_relaunch_request_travels_in_the_job_spec(tmp_path: Path) -> None:
    request = OomRelaunchRequest(
        step=3,
        rank=1,
        old_micro_batch=4,
        old_accumulation=1,
        new_micro_batch=2,
        new_accumulation=2,
        message="m",
    )
    spec = make_spec(tmp_path, data=tmp_path / "d.jsonl", config="x: 1\n")
    spec["resume"] = {"output_dir": spec["output_dir"], "step": None, "oom": request.to_json()}
    parsed = parse_spec(spec)
    assert parsed.resume is not None and parsed.resume.oom == request
    spec["resume"]["oom"] = {"step": 1}
    with pytest.raises(CryptotuneError, match=r"resume\.oom"):
        parse_spec(spec)
