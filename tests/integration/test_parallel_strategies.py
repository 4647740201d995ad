"""Every parallel strategy trains the same model as one process (torchrun ranks on gloo, CPU).

Equivalence is the test: the same job (fp32, same data order, same effective batch) run by one
process and by several ranks under a strategy logs the same loss at every optimiser step and saves
the same adapter, which loads with plain peft.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cryptotune_daemon.training.checkpoints import newest_verified
from tests.helpers.pipeline import REPO, adapter_weights, make_spec, of, read_events, write_records

STEPS = 6
CONFIG = """\
model:
  model_name: builtin:tiny-qwen3
training:
  max_steps: {steps}
  per_device_train_batch_size: {micro}
  gradient_accumulation_steps: {accumulation}
  learning_rate: 0.02
  lr_scheduler_type: linear
  warmup_ratio: 0.1
  max_grad_norm: 1.0
  logging_steps: 1
  save_steps: {save_steps}
  eval_strategy: steps
  eval_steps: 3
  max_seq_length: 512
  eval_sample_size: 0
  max_new_tokens: 2
  seed: 5
lora:
  rank: 4
  alpha: 8
  dropout: 0.0
data:
  train_split_ratio: 0.875
  eval_split_ratio: 0.125
parallel:
  strategy: {strategy}
  world_size: {world}
  enable_distributed: {distributed}
"""


def job_config(
    *,
    strategy: str = "data_parallel",
    world: int = 1,
    micro: int = 4,
    accumulation: int = 1,
    save_steps: int = 3,
    schedule: str = "gpipe",
) -> str:
    text = CONFIG.format(
        steps=STEPS,
        micro=micro,
        accumulation=accumulation,
        save_steps=save_steps,
        strategy=strategy,
        world=world,
        distributed=str(world > 1).lower(),
    )
    if strategy == "pipeline_parallel":
        # Each per-device batch of 4 is cut into 2 micro-batches of 2 samples.
        text += f"  pipeline_schedule: {schedule}\n  pipeline_micro_batches: 2\n"
    return text


def run_job(
    root: Path,
    data: Path,
    config: str,
    *,
    world: int,
    name: str,
    output: Path | None = None,
    resume: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any], str]:
    """Runs the worker as the daemon does (torchrun for several ranks); returns exit code, spec, stderr."""
    spec = make_spec(
        root, data=data, config=config, output=output or root / name, resume=resume, events=f"{name}.jsonl"
    )
    spec_path = root / f"{name}-spec.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), env.get("PYTHONPATH", "")])
    command = [sys.executable]
    if world > 1:
        command += ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(world)]
        command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
    command += ["-m", "cryptotune_daemon.worker", "--spec", str(spec_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    return result.returncode, spec, result.stderr[-4000:]


def losses(spec: dict[str, Any]) -> list[float]:
    return [float(p["loss"]) for p in of(read_events(Path(spec["events_path"])), "progress")]


def relative_difference(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(expected)
    diff = sum(float((got[k].float() - expected[k].float()).pow(2).sum()) for k in expected)
    norm = sum(float(expected[k].float().pow(2).sum()) for k in expected)
    return float((diff / norm) ** 0.5)


def assert_loads_with_plain_peft(adapter: Path) -> None:
    from peft import PeftModel

    from cryptotune_daemon.training.models import build_tiny_qwen3

    model = PeftModel.from_pretrained(build_tiny_qwen3(), str(adapter))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    saved = adapter_weights(adapter)
    assert len(loaded) == len(saved) > 0
    for tensor in saved.values():
        assert float(tensor.abs().sum()) > 0 or tensor.shape[0] > 0  # whole tensors, never empty shards


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The reference: one process, micro-batch 4 (the effective batch of every parallel job here)."""
    root = tmp_path_factory.mktemp("single")
    data = write_records(root / "records.jsonl", 16)
    code, spec, stderr = run_job(root, data, job_config(), world=1, name="single")
    assert code == 0, stderr
    assert len(losses(spec)) == STEPS
    return data, spec


def assert_equivalent(spec: dict[str, Any], reference: dict[str, Any]) -> None:
    got, expected = losses(spec), losses(reference)
    assert len(got) == len(expected) == STEPS
    for step, (a, b) in enumerate(zip(got, expected, strict=True), start=1):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {step}: loss {a} differs from one process's {b}"
    adapter = Path(spec["output_dir"]) / "adapter"
    difference = relative_difference(
        adapter_weights(adapter), adapter_weights(Path(reference["output_dir"]) / "adapter")
    )
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, expected, strict=True))
    print(f"largest relative loss difference {worst:.2e}; adapter difference {difference:.2e}")
    assert difference <= 1e-3, f"the adapter differs from one process's by {difference:.2e} (relative norm)"
    assert_loads_with_plain_peft(adapter)
    # Mid-training evaluation sees the same model too.
    evals = [float(e["eval_loss"]) for e in of(read_events(Path(spec["events_path"])), "eval")]
    expected_evals = [float(e["eval_loss"]) for e in of(read_events(Path(reference["events_path"])), "eval")]
    assert len(evals) == len(expected_evals) >= 2
    for a, b in zip(evals, expected_evals, strict=True):
        assert abs(a - b) <= 1e-4 * abs(b), f"eval loss {a} differs from one process's {b}"


# Strategy, per-device micro-batch of 2 ranks for the reference's effective batch of 4, report mesh.
# Tensor- and pipeline-parallel ranks see the same samples (data-parallel degree 1): each takes all 4.
TWO_RANK_CASES = [
    ("data_parallel", 2, {"dp": 2}),
    ("sharded_data_parallel", 2, {"dp_shard": 2}),
    ("model_parallel", 4, {"tp": 2}),
    ("pipeline_parallel", 4, {"pp": 2}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "micro", "mesh"), TWO_RANK_CASES)
def test_two_ranks_train_the_same_model_as_one_process(
    strategy: str, micro: int, mesh: dict[str, int], single: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    data, reference = single
    config = job_config(strategy=strategy, world=2, micro=micro)
    code, spec, stderr = run_job(tmp_path, data, config, world=2, name=strategy)
    assert code == 0, stderr
    assert_equivalent(spec, reference)
    report = json.loads((Path(spec["output_dir"]) / "report.json").read_text())
    assert report["strategy"] == strategy and report["world_size"] == 2
    assert report["mesh"] == mesh
    # The checkpoint holds the whole adapter and optimiser state (by name), not one rank's shard.
    checkpoint = newest_verified(Path(spec["output_dir"]))
    assert checkpoint is not None
    saved = adapter_weights(checkpoint.path / "adapter")
    reference_adapter = adapter_weights(Path(reference["output_dir"]) / "adapter")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference_adapter.items()}
    optimizer = torch.load(checkpoint.path / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == len(saved)
    for name, values in optimizer["state"].items():
        assert "lora_" in name and values["exp_avg"].shape == values["exp_avg_sq"].shape


def start_job(
    root: Path, data: Path, config: str, *, world: int, name: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Starts the worker under torchrun in its own process group (so a cancel reaches every rank)."""
    spec = make_spec(root, data=data, config=config, output=root / name, events=f"{name}.jsonl")
    spec_path = root / f"{name}-spec.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(world)]
    command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
    command += ["-m", "cryptotune_daemon.worker", "--spec", str(spec_path)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    return process, spec


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "micro"), [("sharded_data_parallel", 2), ("model_parallel", 4), ("pipeline_parallel", 4)]
)
def test_split_job_cancelled_after_a_checkpoint_resumes_as_one_process(
    strategy: str, micro: int, single: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    import signal
    import time

    data, reference = single
    process, spec = start_job(
        tmp_path,
        data,
        # The pipeline runs 1F1B here (the equivalence case above runs GPipe).
        job_config(strategy=strategy, world=2, micro=micro, schedule="1f1b"),
        world=2,
        name="sharded",
    )
    events_path = Path(spec["events_path"])
    try:
        deadline = time.monotonic() + 600
        while not any(c["step"] == 3 for c in of(read_events(events_path), "checkpoint")):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint at step 3"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)  # the cancel the daemon sends: the whole group
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # The steps before the cancel are the single process's steps too.
    before = losses(spec)[:3]
    for a, b in zip(before, losses(reference)[:3], strict=True):
        assert abs(a - b) <= 1e-4 * abs(b), f"loss {a} differs from one process's {b}"
    # Fewer free GPUs after a restart: one process, per-device batch doubled (same effective batch).
    resume = {"output_dir": spec["output_dir"], "step": 3}
    config = job_config(world=1, micro=4)
    code, resumed, stderr = run_job(
        tmp_path, data, config, world=1, name="resumed", output=Path(spec["output_dir"]), resume=resume
    )
    assert code == 0, stderr
    events = read_events(Path(resumed["events_path"]))
    assert [p["step"] for p in of(events, "progress")] == [4, 5, 6]
    final, expected = losses(resumed)[-1], losses(reference)[-1]
    assert abs(final - expected) <= 1e-3 * abs(expected), f"final loss {final} != uninterrupted {expected}"
    report = json.loads((Path(resumed["output_dir"]) / "report.json").read_text())
    assert report["resumed_from_step"] == 3 and report["strategy"] == "data_parallel"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 4 ranks (plus the reference) on a busy 2-core machine: up to ~15 minutes
def test_hybrid_with_four_ranks_trains_the_same_model_as_one_process(
    single: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A 2 × 2 mesh: tensor parallel in pairs of ranks, FSDP2 across the 2 pairs (data-parallel degree 2)."""
    data, reference = single
    config = job_config(strategy="hybrid_parallel", world=4, micro=2) + "  tensor_parallel_size: 2\n"
    code, spec, stderr = run_job(tmp_path, data, config, world=4, name="hybrid")
    assert code == 0, stderr
    assert_equivalent(spec, reference)
    report = json.loads((Path(spec["output_dir"]) / "report.json").read_text())
    assert report["strategy"] == "hybrid_parallel" and report["world_size"] == 4
    assert report["mesh"] == {"tp": 2, "dp_shard": 2}
    # Gathered over both mesh dimensions: whole tensors by name, never one rank's block.
    checkpoint = newest_verified(Path(spec["output_dir"]))
    assert checkpoint is not None
    saved = adapter_weights(checkpoint.path / "adapter")
    reference_adapter = adapter_weights(Path(reference["output_dir"]) / "adapter")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference_adapter.items()}
    optimizer = torch.load(checkpoint.path / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == len(saved)
    for name, values in optimizer["state"].items():
        assert values["exp_avg"].shape == saved[name.replace(".default", "")].shape


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_hybrid_resumes_a_one_process_checkpoint(single: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Checkpoints by name load into the 2-D layout: one process's step-3 checkpoint, resumed by 4 hybrid
    ranks (2 × 2, per-device batch halved), trains steps 4–6 as the uninterrupted process did."""
    import shutil

    data, reference = single
    output = tmp_path / "resumed"
    shutil.copytree(reference["output_dir"], output)
    for later in (output / "checkpoints").glob("step-*"):
        if later.name > "step-000003":
            shutil.rmtree(later)
    config = job_config(strategy="hybrid_parallel", world=4, micro=2) + "  tensor_parallel_size: 2\n"
    resume = {"output_dir": str(output), "step": 3}
    code, resumed, stderr = run_job(
        tmp_path, data, config, world=4, name="resumed", output=output, resume=resume
    )
    assert code == 0, stderr
    assert [p["step"] for p in of(read_events(Path(resumed["events_path"])), "progress")] == [4, 5, 6]
    for got, expected in zip(losses(resumed), losses(reference)[3:], strict=True):
        assert abs(got - expected) <= 1e-4 * abs(expected), f"loss {got} != uninterrupted {expected}"
    report = json.loads((output / "report.json").read_text())
    assert report["resumed_from_step"] == 3 and report["strategy"] == "hybrid_parallel"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sharded_across_two_emulated_nodes_is_hsdp_and_trains_the_same_model(
    single: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """``parallel.nodes: 2`` with 4 ranks: FSDP2 shards over the 2 ranks of each "machine" and
    replicates across the 2 machines (one torchrun here: the mesh is what differs), and passes the
    pre-flight all-reduce a job across nodes runs."""
    data, reference = single
    config = job_config(strategy="sharded_data_parallel", world=4, micro=1).replace(
        "parallel:\n", "parallel:\n  nodes: 2\n"
    )
    code, spec, stderr = run_job(tmp_path, data, config, world=4, name="hsdp")
    assert code == 0, stderr
    assert_equivalent(spec, reference)
    report = json.loads((Path(spec["output_dir"]) / "report.json").read_text())
    assert report["strategy"] == "sharded_data_parallel" and report["world_size"] == 4
    assert report["mesh"] == {"dp_replicate": 2, "dp_shard": 2}
