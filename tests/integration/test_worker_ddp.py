"""A two-process gloo DDP run through ``torch.distributed.run``, exactly as the daemon launches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryptotune_daemon.training.checkpoints import newest_verified
from cryptotune_daemon.worker.state import STAGES
from tests.helpers.pipeline import REPO, config_text, make_spec, of, read_events, write_records


@pytest.mark.slow
def test_two_process_data_parallel_run_completes(tmp_path: Path) -> None:
    data = write_records(tmp_path / "records.jsonl", 12)
    config = config_text(steps=4, save_steps=2) + "parallel:\n  world_size: 2\n  enable_distributed: true\n"
    spec = make_spec(tmp_path, data=data, config=config)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "cryptotune_daemon.worker", "--spec", str(spec_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    events = read_events(Path(spec["events_path"]))
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 writes events: every stage starts and completes exactly once, in order.
    stage_events = [(e["type"], e["data"]["stage"]) for e in events if e["type"].startswith("stage_")]
    assert stage_events == [
        (kind, stage) for stage in STAGES for kind in ("stage_started", "stage_completed")
    ]
    assert [p["step"] for p in of(events, "progress")] == [1, 2, 3, 4]
    plan = of(events, "plan")[0]
    assert plan["world_size"] == 2 and plan["effective_batch_size"] == 4
    assert events[-1]["type"] == "result"
    out = Path(spec["output_dir"])
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 4
    checkpoint = newest_verified(out)
    assert checkpoint is not None and checkpoint.step == 4
    # Every rank's RNG state is kept so a resume restores each rank's stream.
    assert {"rng_state_0.pt", "rng_state_1.pt"} <= set(checkpoint.manifest["files"])
