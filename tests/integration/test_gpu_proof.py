"""bench/gpu_proof.sh: the GPU proof's CPU rehearsal runs every part, and a GPU run without a GPU skips.

The rehearsal is the check that a lent GPU machine will not be wasted on a script that fails early:
the same script, the same parts, tiny shapes on the CPU (the OOM injected through the fault seam).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_proof.sh"
PARTS = ["daemon_job", "throughput", "oom_recovery", "strategies", "long_sequences"]


def run_proof(out: Path, *arguments: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    process = subprocess.Popen(
        ["bash", str(SCRIPT), *arguments, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate()
    except BaseException:  # the test's timeout: the script ends its running part on SIGTERM
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)
        raise
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    log = (out / "gpu_proof.log").read_text(errors="replace") if (out / "gpu_proof.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log[-6000:]}"
    report: dict[str, Any] = json.loads((out / "gpu_proof.json").read_text(encoding="utf-8"))
    assert isinstance(report["device"], str) and report["device"]
    assert [part["name"] for part in report["parts"]] == PARTS
    for part in report["parts"]:
        assert isinstance(part["ok"], bool)
        assert isinstance(part["seconds"], int | float)
    return report


@pytest.mark.slow
@pytest.mark.timeout(3600)  # about 20 minutes on a busy shared 2-core machine
def test_rehearsal_runs_every_part(tmp_path: Path) -> None:
    report = run_proof(tmp_path, "--rehearse")
    check_rehearsal(report, (tmp_path / "gpu_proof.log").read_text(errors="replace"))


def check_rehearsal(report: dict[str, Any], log: str) -> None:
    """Every part ran and passed, none skipped, and each reports the figures it exists for."""
    parts = {part["name"]: part for part in report["parts"]}
    failed = {name: part.get("error") or part.get("checks") for name, part in parts.items() if not part["ok"]}
    assert not failed, f"{failed}\n{log[-6000:]}"
    assert not [name for name, part in parts.items() if "skipped" in part]
    assert report["rehearsal"] is True
    assert report["device"].startswith("CPU rehearsal")

    job = parts["daemon_job"]["job"]
    assert job["state"] == "succeeded" and job["checkpoints"] and job["report"]["eval_loss"] is not None

    throughput = parts["throughput"]["variants"]
    assert set(throughput) == {"a", "b", "c"}
    assert all(v["trained_tokens_per_second"] > 0 and v["mfu"] > 0 for v in throughput.values())

    oom = parts["oom_recovery"]
    assert oom["recoveries"][0]["new_micro_batch"] == oom["planned_micro_batch"] // 2
    assert oom["steps"] == oom["total_steps"]
    assert oom["planner_estimate_mb"] > 0 and oom["measured_peak_mb"] > 0

    strategies = parts["strategies"]["strategies"]
    assert any(s["strategy"] == "data_parallel" and s["ok"] and s["world_size"] == 1 for s in strategies)
    assert not any("skipped" in s for s in strategies)

    runs = parts["long_sequences"]["runs"]
    assert [r["gradient_checkpointing"] for r in runs] == [True, False]
    for run in runs:
        # The planner's estimate beside the measured peak.
        assert run["planner_estimate_mb"] > 0 and run["measured_peak_mb"] > 0
        assert run["median_step_seconds"] > 0 and run["row_shape"][0] == 1


def gpu_visible() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return bool(pynvml.nvmlDeviceGetCount())
    except Exception:  # no driver or no binding: no GPU
        return False


def test_gpu_run_without_a_gpu_skips_every_part_and_still_ends_well(tmp_path: Path) -> None:
    if gpu_visible():
        pytest.skip("a GPU is visible: without --rehearse the script would run the whole GPU proof")
    report = run_proof(tmp_path)
    assert report["rehearsal"] is False
    for part in report["parts"]:
        assert part["ok"] is False
        assert "no CUDA GPU" in part["skipped"]
