"""The pure decisions of jobs on Ray: placement request, waiting message, names, versions, config rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cryptotune_daemon.cluster.versions import describe_version_mismatch
from cryptotune_daemon.config import validate_config_text
from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.submission import SubmitRequest, prepare
from cryptotune_daemon.jobs.worker_process import RayTarget, worker_command
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore
from cryptotune_daemon.worker.ray_placement import (
    actor_name,
    bundles_in_rank_order,
    free_nodes,
    lost_node_message,
    namespace_for,
    placement_group_name,
    placement_request,
    waiting_message,
)
from cryptotune_daemon.worker.ray_rank import rank_spec
from cryptotune_daemon.worker.spec import JobSpec, ResumeSpec


def test_one_bundle_per_rank_strictly_spread_with_one_rank_per_node() -> None:
    request = placement_request(2, 2, gpus=False)
    assert request.bundles == ({"CPU": 1.0}, {"CPU": 1.0}) and request.strategy == "STRICT_SPREAD"
    assert request.device == "cpu" and request.per_node == 1
    gpus = placement_request(8, 2, gpus=True)
    assert gpus.bundles == ({"GPU": 1.0},) * 8 and gpus.strategy == "PACK" and gpus.per_node == 4
    assert gpus.device == "cuda"


def test_ranks_are_numbered_node_by_node_whatever_order_ray_placed_the_bundles() -> None:
    # Ray's PACK put bundles 0 and 2 on node a, 1 and 3 on node b: ranks 0-1 go to a, 2-3 to b.
    assert bundles_in_rank_order({0: "a", 1: "b", 2: "a", 3: "b"}) == [0, 2, 1, 3]
    assert bundles_in_rank_order({0: "b", 1: "b", 2: "a", 3: "a"}) == [0, 1, 2, 3]
    assert bundles_in_rank_order({1: "x", 0: "y"}) == [0, 1]


def test_the_waiting_message_says_what_is_missing() -> None:
    request = placement_request(2, 2, gpus=False)
    free = free_nodes(request, [{"CPU": 1.0}, {"CPU": 0.0}, {}])
    assert waiting_message(request, free) == "waiting for 2 nodes × 1 CPU; the cluster has 1 node free"
    gpus = placement_request(8, 2, gpus=True)
    assert free_nodes(gpus, [{"GPU": 4.0}, {"GPU": 2.0}]) == 1
    assert waiting_message(gpus, 0) == "waiting for 2 nodes × 4 GPUs; the cluster has 0 nodes free"


def test_names_carry_the_job_and_each_daemon_has_its_own_namespace(tmp_path: Path) -> None:
    assert placement_group_name("job-1") == "cryptotune-job-1-pg"
    assert actor_name("job-1", 3) == "cryptotune-job-1-rank-3"
    one, other = namespace_for(tmp_path / "a"), namespace_for(tmp_path / "b")
    assert one.startswith("cryptotune-") and one != other and one == namespace_for(tmp_path / "a")
    assert "rank 1" in lost_node_message("abc", "10.0.0.2", 1) and "abc" in lost_node_message("abc", "x", 1)


def test_a_version_mismatch_names_the_node_and_the_versions() -> None:
    expected = {"cryptotune": "0.1.0", "torch": "2.15.0", "python": "3.11.9"}
    assert describe_version_mismatch(expected, dict(expected), "n1") is None
    message = describe_version_mismatch(expected, {**expected, "torch": "2.13.0"}, "n1 (10.0.0.2)")
    assert message is not None and "n1 (10.0.0.2)" in message and "torch 2.13.0" in message
    assert "2.15.0" in message


def test_the_driver_command_and_the_rank_spec(tmp_path: Path) -> None:
    command = worker_command(tmp_path / "spec.json", 2, RayTarget("10.0.0.1:6379", "cryptotune-x", 30.0))
    assert command[-6:] == [
        "--ray-address",
        "10.0.0.1:6379",
        "--ray-namespace",
        "cryptotune-x",
        "--ray-node-wait-s",
        "30",
    ]
    spec = {"data_path": "/srv/blobs/ab", "output_dir": "/srv/out", "resume": {"output_dir": "/srv/out"}}
    local = rank_spec(spec, tmp_path, "ab")
    # The rank is given no path outside its scratch dir.
    for key in ("data_path", "output_dir", "state_dir", "events_path"):
        assert str(local[key]).startswith(str(tmp_path))
    assert local["resume"]["output_dir"] == str(tmp_path / "output")


def test_the_spec_carries_nodes_and_the_lost_node(tmp_path: Path) -> None:
    spec = JobSpec(
        job_id="j",
        pipeline_id="p",
        data_path=tmp_path / "d",
        data_name="d",
        config_yaml="",
        config_name="c",
        output_dir=tmp_path / "o",
        state_dir=tmp_path,
        world_size=4,
        nodes=2,
        resume=ResumeSpec(tmp_path / "o", lost_node="node n1 (x) running rank 1 was lost"),
    )
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and again.on_ray
    assert not dataclasses.replace(spec, nodes=1).on_ray


@pytest.mark.parametrize(
    ("parallel", "problem"),
    [
        ("world_size: 3\n  enable_distributed: true\n  nodes: 2", "multiple of 2"),
        ("world_size: 1\n  nodes: 2", "multiple of 2"),
    ],
)
def test_nodes_must_divide_the_world_size(parallel: str, problem: str) -> None:
    report = validate_config_text(f"model:\n  model_name: builtin:tiny-qwen3\nparallel:\n  {parallel}\n")
    assert not report.valid
    assert any(e.path == "parallel.nodes" and problem in e.message and e.line for e in report.errors)


def test_one_node_with_more_ranks_than_gpus_suggests_parallel_nodes() -> None:
    text = "parallel:\n  world_size: 8\n  enable_distributed: true\n"
    report = validate_config_text(text, gpu_count=4)
    assert any("parallel.nodes" in e.message for e in report.errors)
    ok = validate_config_text(text + "  nodes: 2\n", gpu_count=4)
    assert ok.valid, ok.errors


def test_a_daemon_on_ray_accepts_a_job_across_nodes(tmp_path: Path) -> None:
    settings = DaemonSettings(
        state_dir=tmp_path / "state", listen=(), allowed_output_roots=(tmp_path,), ray_address="auto"
    )
    blobs = BlobStore(tmp_path / "blobs")
    with blobs.writer() as writer:
        writer.write(b'{"instruction": "q", "output": "a"}\n')
        digest = writer.commit().digest
    text = "parallel:\n  world_size: 8\n  enable_distributed: true\n  nodes: 2\n"
    request = SubmitRequest("r", digest, "d", text, "c.yaml", str(tmp_path / "out"), "", "", True)
    store = JobStore(tmp_path / "jobs.sqlite3")
    prepared = prepare(request, settings=settings, store=store, blobs=blobs, gpu_count=4)
    assert prepared.spec.nodes == 2 and prepared.spec.world_size == 8
    with pytest.raises(CryptotuneError, match=r"parallel\.nodes"):
        one = SubmitRequest(
            "r2", digest, "d", text.replace("nodes: 2", "nodes: 1"), "c", str(tmp_path / "o2"), "", "", True
        )
        prepare(one, settings=settings, store=store, blobs=blobs, gpu_count=4)
