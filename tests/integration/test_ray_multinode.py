"""Jobs across machines on a real 2-node Ray cluster (issue 13's Done-when), all on this machine.

One cluster (``tests/helpers/ray_cluster.py``: a head without CPUs and worker nodes of one CPU each,
inside a loopback-only network namespace) is started once and shared by every scenario; the daemon
runs inside the same namespace (``nsenter``) and listens on a unix socket, which the SDK here reaches.
The scenarios run in file order and leave the cluster as the next one expects (each states it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from cryptotune import Client
from cryptotune_daemon.training.checkpoints import newest_verified
from cryptotune_daemon.worker.ray_placement import placement_group_name
from tests.helpers.pipeline import REPO, write_records
from tests.helpers.ray_cluster import ClusterHost, require_network_namespace
from tests.integration.conftest import BIN, RunningDaemon, run_cli, short_tmp_dir, stop_daemon, wait_serving

pytestmark = pytest.mark.slow

NODE_WAIT_S = 20  # --ray-node-wait-s of the test daemon
TIMEOUT_S = 300

CONFIG = """\
model:
  model_name: builtin:tiny-qwen3
training:
  max_steps: {steps}
  per_device_train_batch_size: {micro}
  gradient_accumulation_steps: 1
  learning_rate: 0.01
  lr_scheduler_type: constant
  warmup_ratio: 0.0
  logging_steps: 1
  save_steps: {save_steps}
  eval_strategy: "no"
  max_seq_length: 128
  eval_sample_size: 1
  max_new_tokens: 2
  seed: 11
lora:
  rank: 4
  alpha: 8
  dropout: 0.0
data:
  train_split_ratio: 0.75
  eval_split_ratio: 0.25
parallel:
  strategy: {strategy}
  world_size: {world}
  enable_distributed: true
  nodes: {nodes}
"""


@dataclass
class RayEnv:
    host: ClusterHost
    root: Path
    data: Path
    daemon: RunningDaemon
    local_ddp_losses: list[tuple[int, float]] | None = None

    def client(self) -> Client:
        return Client(self.daemon.address)

    def start_daemon(self) -> None:
        self.daemon = _start_daemon(self.host, self.root / "state")

    def submit(
        self,
        name: str,
        *,
        steps: int,
        save_steps: int,
        nodes: int = 2,
        world: int = 2,
        strategy: str = "data_parallel",
        micro: int = 2,
    ) -> Any:
        config = self.root / f"{name}.yaml"
        text = CONFIG.format(
            steps=steps, save_steps=save_steps, world=world, nodes=nodes, strategy=strategy, micro=micro
        )
        config.write_text(text)
        with self.client() as client:
            return client.submit(self.data, config, output_dir=self.root / "out" / name, pipeline_id=name)

    def events_file(self, job_id: str) -> list[dict[str, Any]]:
        path = self.daemon.state_dir / "jobs" / job_id / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _start_daemon(host: ClusterHost, state_dir: Path) -> RunningDaemon:
    state_dir.mkdir(parents=True, exist_ok=True)
    address = f"unix://{state_dir}/d.sock"
    log_path = state_dir.parent / "daemon.log"
    command = [*host.nsenter(), str(BIN / "cryptotuned"), "--state-dir", str(state_dir), "--listen", address]
    command += ["--warm-workers", "0", "--ray-address", host.address, "--ray-node-wait-s", str(NODE_WAIT_S)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_serving(address, process)
    except Exception:
        process.kill()
        raise RuntimeError(f"daemon failed to start:\n{log_path.read_text(errors='replace')}") from None
    return RunningDaemon(process, state_dir, address, log_path)


@pytest.fixture(scope="module")
def ray_env() -> Iterator[RayEnv]:
    require_network_namespace()
    root = short_tmp_dir()
    host = ClusterHost(REPO, root / "cluster.log")
    env: RayEnv | None = None
    try:
        data = write_records(root / "records.jsonl", 16)
        env = RayEnv(host, root, data, _start_daemon(host, root / "state"))
        yield env
    finally:
        if env is not None:
            stop_daemon(env.daemon)
        host.close()
        # Ranks on a removed node could not clean their scratch dirs (a real lost node takes them along).
        for job_dir in (root / "state" / "jobs").glob("*"):
            for scratch in Path(tempfile.gettempdir()).glob(f"cryptotune-{job_dir.name}-rank*"):
                shutil.rmtree(scratch, ignore_errors=True)
        if os.environ.get("CRYPTOTUNE_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(root, ignore_errors=True)


def wait_for(predicate: Any, what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def wait_terminal(env: RayEnv, job_id: str) -> Any:
    def done() -> Any:
        with env.client() as client:
            job = client.get_job(job_id)
        return job if job.terminal else None

    return wait_for(done, f"job {job_id} to end")


def progress_step(env: RayEnv, job_id: str) -> int:
    with env.client() as client:
        return int(client.get_job(job_id).progress.step)


def losses(events: list[Any]) -> list[tuple[int, float]]:
    return [(int(e.data["step"]), float(e.data["loss"])) for e in events if e.type == "progress"]


def ranks_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    started = [e["data"]["ranks"] for e in events if e["type"] == "log" and "ranks" in e["data"]]
    return started[-1] if started else []


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_two_node_job_trains_like_local_ddp(ray_env: RayEnv) -> None:
    # Cluster: node-a, node-b (one CPU each; the head has none).
    job = ray_env.submit("two-nodes", steps=4, save_steps=2)
    finished = wait_terminal(ray_env, job.job_id)
    assert finished.state.value == "succeeded", finished.failure_reason
    with ray_env.client() as client:
        events = list(client.watch(job.job_id))
    # watch replays gap-free; the job waited QUEUED, was placed, then ran.
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    states = [e.data["state"] for e in events if e.type == "state"]
    assert states[0] == "queued" and states[-1] == "succeeded" and "running" in states
    placed = [e.data for e in events if e.type == "placed"]
    assert placed and placed[0]["strategy"] == "STRICT_SPREAD"
    ranks = ranks_of(ray_env.events_file(job.job_id))
    assert {r["node_id"] for r in ranks} == set(ray_env.host.nodes().values()), "one rank per node"
    ray_losses = losses(events)
    assert [s for s, _ in ray_losses] == [1, 2, 3, 4]
    out = Path(finished.output_dir)
    checkpoint = newest_verified(out)
    assert checkpoint is not None and checkpoint.step == 4  # mirrored whole, verified here
    assert json.loads((out / "report.json").read_text())["steps"] == 4

    from peft import PeftModel

    from cryptotune_daemon.training.models import build_tiny_qwen3

    model = PeftModel.from_pretrained(build_tiny_qwen3(), str(out / "adapter"))
    assert any("lora_A" in name for name, _ in model.named_parameters())

    assert_same_losses(ray_losses, local_ddp_losses(ray_env), "Ray")


def local_ddp_losses(env: RayEnv) -> list[tuple[int, float]]:
    """The reference: the same job under local 2-process DDP (torchrun on the daemon's machine), once."""
    if env.local_ddp_losses is None:
        local = env.submit("local-ddp", steps=4, save_steps=2, nodes=1)
        assert wait_terminal(env, local.job_id).state.value == "succeeded"
        with env.client() as client:
            env.local_ddp_losses = losses(list(client.watch(local.job_id)))
    assert [s for s, _ in env.local_ddp_losses] == [1, 2, 3, 4]
    return env.local_ddp_losses


def assert_same_losses(
    got: list[tuple[int, float]], expected: list[tuple[int, float]], what: str, *, relative: bool = False
) -> None:
    """Every step's loss within 1e-4 of local DDP's (absolute; relative for the split strategies, whose
    reductions run in another order, as in test_parallel_strategies.py)."""
    assert [s for s, _ in got] == [s for s, _ in expected]
    for (step, loss), (_, reference) in zip(got, expected, strict=True):
        bound = 1e-4 * abs(reference) if relative else 1e-4
        assert abs(loss - reference) <= bound, (
            f"step {step}: loss {loss} with {what}, {reference} under local DDP"
        )


# Strategy, per-device micro-batch for DDP's effective batch of 4 (tensor- and pipeline-parallel ranks
# see the same samples), the mesh the report gives across 2 nodes of one rank each.
ACROSS_NODES = [
    ("sharded_data_parallel", 2, {"dp_replicate": 2, "dp_shard": 1}),
    ("model_parallel", 4, {"tp": 2}),
    ("pipeline_parallel", 4, {"pp": 2}),
]


@pytest.mark.parametrize(("strategy", "micro", "mesh"), ACROSS_NODES)
def test_every_split_strategy_trains_across_two_nodes_like_local_ddp(
    ray_env: RayEnv, strategy: str, micro: int, mesh: dict[str, int]
) -> None:
    # Cluster: node-a, node-b. (hybrid_parallel needs 4 ranks, tp × dp_shard: it is run on 4 local
    # processes in test_parallel_strategies.py and goes through the same rank runner here.)
    job = ray_env.submit(f"across-{strategy}", steps=4, save_steps=4, strategy=strategy, micro=micro)
    finished = wait_terminal(ray_env, job.job_id)
    assert finished.state.value == "succeeded", finished.failure_reason
    ranks = ranks_of(ray_env.events_file(job.job_id))
    assert {r["node_id"] for r in ranks} == set(ray_env.host.nodes().values()), "one rank per node"
    with ray_env.client() as client:
        events = list(client.watch(job.job_id))
    assert_same_losses(losses(events), local_ddp_losses(ray_env), f"{strategy} on Ray", relative=True)
    report = json.loads((Path(finished.output_dir) / "report.json").read_text())
    assert (report["strategy"], report["world_size"], report["mesh"]) == (strategy, 2, mesh)


def test_cancel_ends_every_rank_and_removes_the_placement_group(ray_env: RayEnv) -> None:
    job = ray_env.submit("cancelled", steps=400, save_steps=200)
    wait_for(lambda: progress_step(ray_env, job.job_id) >= 1, "the first step")
    ranks = ranks_of(ray_env.events_file(job.job_id))
    assert len(ranks) == 2
    with ray_env.client() as client:
        client.cancel(job.job_id)
    assert wait_terminal(ray_env, job.job_id).state.value == "cancelled"
    pids = [p for r in ranks for p in (r["pid"], r["actor_pid"])]
    wait_for(lambda: all(gone(p) for p in pids), "every rank process to end", timeout=60)
    name = placement_group_name(job.job_id)
    groups = [g for g in ray_env.host.placement_groups() if g["name"] == name]
    assert groups and all(g["state"] == "REMOVED" for g in groups), groups


def test_a_daemon_kill_9_leaves_the_job_running_and_it_succeeds(ray_env: RayEnv) -> None:
    job = ray_env.submit("daemon-killed", steps=12, save_steps=4)
    wait_for(lambda: progress_step(ray_env, job.job_id) >= 2, "step 2")
    ray_env.daemon.process.kill()
    ray_env.daemon.process.wait()
    ray_env.start_daemon()
    finished = wait_terminal(ray_env, job.job_id)
    assert finished.state.value == "succeeded", finished.failure_reason
    with ray_env.client() as client:
        events = list(client.watch(job.job_id))
        records = [j for j in client.list_jobs(limit=100) if j.pipeline_id == job.pipeline_id]
    assert len(records) == 1
    assert [s for s, _ in losses(events)] == list(range(1, 13))  # one uninterrupted run
    assert "recovering" not in [e.data.get("state") for e in events if e.type == "state"]
    assert json.loads((Path(finished.output_dir) / "report.json").read_text())["steps"] == 12


def test_a_lost_node_resumes_from_the_newest_checkpoint_when_a_node_is_back(ray_env: RayEnv) -> None:
    lost_id = ray_env.host.nodes()["node-b"]
    job = ray_env.submit("node-lost", steps=24, save_steps=2)
    out = ray_env.root / "out" / "node-lost"
    wait_for(lambda: (c := newest_verified(out)) is not None and c.step >= 2, "a mirrored checkpoint")
    ray_env.host.remove("node-b")
    wait_for(lambda: any(e["type"] == "node_lost" for e in ray_env.events_file(job.job_id)), "the lost node")
    ray_env.host.add("node-b2")
    finished = wait_terminal(ray_env, job.job_id)
    assert finished.state.value == "succeeded", finished.failure_reason
    with ray_env.client() as client:
        events = list(client.watch(job.job_id))
    states = [e.data for e in events if e.type == "state"]
    recovering = [s for s in states if s["state"] == "recovering"]
    assert recovering and lost_id in recovering[0]["reason"], recovering
    report = json.loads((Path(finished.output_dir) / "report.json").read_text())
    assert report["steps"] == 24 and report["resumed_from_step"] >= 2


def test_a_lost_node_that_does_not_come_back_fails_the_job_naming_it(ray_env: RayEnv) -> None:
    lost_id = ray_env.host.nodes()["node-b2"]
    job = ray_env.submit("node-gone", steps=400, save_steps=2)
    out = ray_env.root / "out" / "node-gone"
    wait_for(lambda: (c := newest_verified(out)) is not None and c.step >= 2, "a mirrored checkpoint")
    ray_env.host.remove("node-b2")
    finished = wait_terminal(ray_env, job.job_id)
    assert finished.state.value == "failed"
    assert lost_id in finished.failure_reason and "no node came back" in finished.failure_reason


def test_a_job_larger_than_the_cluster_waits_queued_and_starts_when_a_node_joins(ray_env: RayEnv) -> None:
    assert list(ray_env.host.nodes()) == ["node-a"]  # left so by the scenario before
    job = ray_env.submit("waits", steps=2, save_steps=2)
    message = "waiting for 2 nodes × 1 CPU; the cluster has 1 node free"
    wait_for(
        lambda: any(
            e["type"] == "waiting" and e["data"]["message"] == message
            for e in ray_env.events_file(job.job_id)
        ),
        "the waiting message",
    )
    with ray_env.client() as client:
        queued = client.get_job(job.job_id)
        assert (queued.state.value, queued.waiting_for) == ("queued", message)
    shown = run_cli("status", "waits", address=ray_env.daemon.address)
    assert shown.exit_code == 0 and message in " ".join(shown.stdout.split()), shown.stdout + shown.stderr
    ray_env.host.add("node-c")
    finished = wait_terminal(ray_env, job.job_id)
    assert finished.state.value == "succeeded", finished.failure_reason
    assert finished.waiting_for == "", "a job that left the queue waits for nothing"
    with contextlib.suppress(Exception):
        ray_env.host.remove("node-c")
