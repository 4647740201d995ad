"""Cancelling ends a job's whole process tree (torchrun, its ranks, their children) and frees its slot."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cryptotune_daemon.jobs import worker_process as wp
from tests.helpers.harness import WAIT_S, Harness, alive, progress_max
from tests.helpers.jobs import wait_terminal, write_config, write_data
from tests.integration.conftest import run_cli


@pytest.mark.slow
def test_cancel_ends_every_process_of_a_ddp_job_and_frees_its_slot(harness: Harness) -> None:
    root = harness.root
    data = write_data(root / "data.jsonl", count=16)
    long_ddp = write_config(root / "ddp.yaml", max_steps=500, save_steps=100, world_size=2)
    short = write_config(root / "short.yaml", max_steps=2, save_steps=2)
    harness.start()
    with harness.client() as client:
        first = client.submit(data, long_ddp, output_dir=root / "out1", pipeline_id="ddp-cancel")
        second = client.submit(data, short, output_dir=root / "out2", pipeline_id="next", dry_run=True)
        harness.wait_events(first.job_id, lambda evs: progress_max(evs) >= 1, "the first DDP step")
        job_dir = harness.job_dir(first.job_id)
        ranks = [h.pid for h, role in wp._recorded(job_dir) if role == "rank"]
        assert len(ranks) == 2, "both torchrun ranks joined the job"
        tree = harness.processes(first.job_id)
        assert {p.pid for p in tree} >= {*ranks, int(harness.job_row(first.job_id)["worker_pid"])}
        assert client.get_job(second.job_id).state == "queued", "the only CPU slot is taken"
        # One rank is stuck (as in a hung collective or CUDA call): SIGTERM cannot end it, so
        # torchrun cannot either, and only the daemon's SIGKILL to every rank's session can.
        os.kill(ranks[1], signal.SIGSTOP)

        gives_up_at = time.monotonic() + WAIT_S  # a guard against a hang, not a speed requirement
        result = run_cli("cancel", "ddp-cancel", address=harness.address)
        assert result.exit_code == 0, result.stdout + result.stderr
        while True:
            state = client.get_job(first.job_id).state
            remaining = [p.pid for p in tree if alive(p)]
            if state == "cancelled":
                # CANCELLED is only declared once no process of the job remains.
                assert remaining == [], f"cancelled while {remaining} still run"
                break
            assert time.monotonic() < gives_up_at, f"never cancelled: still {state}; alive: {remaining}"
            time.sleep(0.1)
        assert harness.processes(first.job_id) == []
        assert not wp.lock_held(job_dir)

        # The slot is free: the queued job runs now.
        assert wait_terminal(client, second.job_id, timeout=WAIT_S) == "succeeded"
    first_events = harness.events(first.job_id)
    second_events = harness.events(second.job_id)
    gone = next(e.ts for e in first_events if e.type == "state" and e.data["state"] == "cancelled")
    started = next(e.ts for e in second_events if e.type == "state" and e.data["state"] == "running")
    assert started >= gone, "the next job started before the cancelled one's processes were gone"
