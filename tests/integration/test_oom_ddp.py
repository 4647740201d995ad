"""Out of memory in one process of a 2-process DDP job: the daemon relaunches every rank with the halved
micro-batch from the newest checkpoint, or fails the job with the reason when nothing is left to halve.

The OOM is injected through the fault seam (cryptotuned --enable-fault-injection
--inject-fault oom=STEP:FITS:RANK) in rank 1 only, as on a real GPU box where one card fills up
first: rank 0 is then stuck in the gradient all-reduce and ends when torchrun stops the job.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers.harness import WAIT_S, Harness, check_runs, states
from tests.helpers.jobs import wait_terminal, write_config, write_data


@pytest.mark.slow
def test_an_oom_in_one_rank_relaunches_the_job_with_half_the_micro_batch(harness: Harness) -> None:
    total, save = 6, 2
    data = write_data(harness.root / "data.jsonl", count=24)
    config = write_config(harness.root / "ddp.yaml", max_steps=total, save_steps=save, world_size=2)
    out = harness.root / "out"
    harness.start(faults=("oom=3:2:1",))  # step 3 runs out of memory in rank 1 above micro-batch 2
    with harness.client() as client:
        job = client.submit(data, config, output_dir=out, pipeline_id="ddp-oom")
        state = wait_terminal(client, job.job_id, timeout=WAIT_S * 3)
        assert state == "succeeded", client.get_job(job.job_id).failure_reason + harness.log()[-3000:]

    events = harness.events(job.job_id)
    assert states(events) == ["queued", "running", "recovering", "queued", "running", "succeeded"]
    (recovering,) = [
        e.data["reason"] for e in events if e.type == "state" and e.data["state"] == "recovering"
    ]
    assert re.search(r"OOM at step 3 with micro-batch 4.*in process 1", recovering), recovering
    queued = [e.data.get("reason", "") for e in events if e.type == "state" and e.data["state"] == "queued"][
        -1
    ]
    assert "micro-batch 2 × gradient accumulation 2 (was 4 × 1" in queued, queued
    (recovery,) = [e.data for e in events if e.type == "oom_recovery"]
    assert recovery == {
        "step": 3,
        "old_micro_batch": 4,
        "new_micro_batch": 2,
        "old_accumulation": 1,
        "new_accumulation": 2,
        "resumed_from_step": 2,
    }
    runs = [run for run in check_runs(events, total, save) if run]
    assert runs[-1][0] == 3, "the relaunch continues after checkpoint 2"
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == total and report["world_size"] == 2
    assert (report["micro_batch_size"], report["gradient_accumulation_steps"]) == (2, 2)
    assert report["oom_recoveries"] == [recovery]
    assert harness.job_row(job.job_id)["retries"] == 0, "an OOM relaunch is not a lost worker"
    assert not (harness.state_dir / "jobs" / job.job_id / "oom_relaunch.json").exists()


@pytest.mark.slow
def test_an_oom_at_micro_batch_one_fails_the_ddp_job_with_the_reason(harness: Harness) -> None:
    data = write_data(harness.root / "data.jsonl", count=24)
    config_path = write_config(harness.root / "ddp.yaml", max_steps=4, save_steps=2, world_size=2)
    config_path.write_text(
        config_path.read_text().replace("per_device_train_batch_size: 4", "per_device_train_batch_size: 1")
    )
    harness.start(faults=("oom=2:0:1",))  # nothing fits in rank 1 at step 2
    with harness.client() as client:
        job = client.submit(data, config_path, output_dir=harness.root / "out", pipeline_id="ddp-oom-1")
        assert wait_terminal(client, job.job_id, timeout=WAIT_S * 2) == "failed"
        reason = client.get_job(job.job_id).failure_reason
    assert reason.startswith("OOM at step 2 with micro-batch 1: not even one sample"), reason
    assert "(in process 1)" in reason
    assert states(harness.events(job.job_id)) == ["queued", "running", "failed"]
