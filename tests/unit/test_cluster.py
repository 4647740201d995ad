"""The cluster view (``list-gpus`` when attached to Ray) and the version check, over plain dicts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from cryptotune import _convert
from cryptotune_daemon.cluster.inventory import ClusterView, cluster_view, holds_by_node, job_of
from cryptotune_daemon.cluster.versions import describe_version_mismatch, local_versions, node_label
from cryptotune_daemon.gpus import GpuInfo, recommend
from cryptotune_daemon.services import serde

JOB = "job-20261202-194500-ab12cd34"
HEAD = "a" * 56
WORKER = "b" * 56
GONE = "c" * 56


def ray_nodes() -> list[dict[str, Any]]:
    """What ``ray.nodes()`` returns (the keys we read), for a head without GPUs and a 4-GPU worker."""
    return [
        {
            "NodeID": WORKER,
            "Alive": True,
            "NodeManagerAddress": "10.0.0.7",
            "NodeManagerHostname": "gpu-1",
            "Resources": {"CPU": 32.0, "GPU": 4.0, "accelerator_type:H100": 1.0, "memory": 1e11},
        },
        {
            "NodeID": HEAD,
            "Alive": True,
            "NodeManagerAddress": "10.0.0.5",
            "NodeManagerHostname": "head",
            "Resources": {"CPU": 8.0, "memory": 1e10},
        },
        {"NodeID": GONE, "Alive": False, "NodeManagerAddress": "10.0.0.9", "Resources": {}},
    ]


def placement_groups() -> dict[str, dict[str, Any]]:
    """``ray.util.placement_group_table()``: our job's 2 bundles on the worker, someone else's 1, a
    pending group (holds nothing) and a removed one."""
    return {
        "pg1": {
            "name": f"cryptotune-{JOB}-ranks",
            "state": "CREATED",
            "bundles": {0: {"GPU": 1.0, "CPU": 1.0}, 1: {"GPU": 1.0, "CPU": 1.0}},
            "bundles_to_node_id": {0: WORKER, 1: WORKER},
        },
        "pg2": {
            "name": "someone-else",
            "state": "CREATED",
            "bundles": {0: {"GPU": 1.0}},
            "bundles_to_node_id": {0: WORKER},
        },
        "pg3": {
            "name": "cryptotune-job-20261202-194600-00000000-ranks",
            "state": "PENDING",
            "bundles": {0: {"GPU": 1.0}},
            "bundles_to_node_id": {0: "f" * 56},
        },
        "pg4": {
            "name": f"cryptotune-{JOB}-old",
            "state": "REMOVED",
            "bundles": {0: {"CPU": 1.0}},
            "bundles_to_node_id": {0: HEAD},
        },
    }


def test_job_id_is_read_from_a_placement_group_name() -> None:
    assert job_of(f"cryptotune-{JOB}-ranks") == JOB
    assert job_of(f"cryptotune-{JOB}") == JOB
    assert job_of("someone-else") is None


def test_only_placed_groups_in_force_hold_resources() -> None:
    holds = holds_by_node(placement_groups())
    assert set(holds) == {WORKER}
    by_job = {h.job_id: (h.gpus, h.cpus) for h in holds[WORKER]}
    assert by_job == {JOB: (2.0, 2.0), "": (1.0, 0.0)}


def test_cluster_view_lists_every_node_with_its_gpus_and_holders() -> None:
    local = [GpuInfo(index=0, uuid="GPU-x", name="A10", memory_total_mb=24000, memory_used_mb=100)]
    view = cluster_view(ray_nodes(), placement_groups(), local_node_id=HEAD, local_gpus=local)
    head, worker, gone = view.nodes  # alive first, the daemon's own node first
    assert (head.node_id, head.local, head.cpus, head.gpus) == (HEAD, True, 8, ())
    assert (worker.address, worker.local, worker.cpus, worker.hostname) == ("10.0.0.7", False, 32, "gpu-1")
    assert [g.name for g in worker.gpus] == ["H100"] * 4 and worker.gpus[0].memory_total_mb == -1
    assert worker.gpus_held == 3
    assert not gone.alive and gone.gpus == ()
    pinned = worker.to_json()
    assert {"node_id", "address", "gpus", "cpus", "local"} <= set(pinned)
    assert pinned["held_by"][0] == {"job_id": JOB, "gpus": 2.0, "cpus": 2.0}


def test_the_local_node_shows_the_daemons_nvml_gpus() -> None:
    local = [
        GpuInfo(index=i, uuid=f"GPU-{i}", name="H100 80GB", memory_total_mb=81559, memory_used_mb=0)
        for i in range(4)
    ]
    view = cluster_view(ray_nodes(), {}, local_node_id=WORKER, local_gpus=local)
    worker = next(n for n in view.nodes if n.local)
    assert worker.gpus == tuple(local) and worker.holds == ()


def test_other_nodes_show_the_gpus_read_there() -> None:
    read = [
        GpuInfo(index=i, uuid=f"GPU-{i}", name="NVIDIA H100", memory_total_mb=81559, memory_used_mb=5)
        for i in range(4)
    ]
    view = cluster_view(ray_nodes(), {}, local_node_id=HEAD, node_gpus={WORKER: read})
    worker = next(n for n in view.nodes if n.node_id == WORKER)
    assert worker.gpus == tuple(read) and worker.to_json()["gpus"][0]["memory_total_mb"] == 81559


def test_a_cluster_without_live_nodes_says_so() -> None:
    assert cluster_view([], {}, local_node_id=None).note == "the Ray cluster has no live node"


def test_versions_match_and_mismatch_name_the_node() -> None:
    mine = local_versions()
    assert set(mine) == {"cryptotune", "torch", "python"}
    assert describe_version_mismatch(mine, dict(mine), "10.0.0.7") is None
    # A Python patch release does not matter; a minor release does.
    patch = {**mine, "python": mine["python"].rsplit(".", 1)[0] + ".99"}
    assert describe_version_mismatch(mine, patch, "10.0.0.7") is None
    daemon = {"cryptotune": "0.1.0", "torch": "2.13.0", "python": "3.11.9"}
    node = {"cryptotune": "0.1.0", "torch": "2.11.0", "python": "3.12.1"}
    message = describe_version_mismatch(daemon, node, node_label("10.0.0.7", WORKER))
    assert message is not None
    assert message.startswith("node 10.0.0.7 (ray node bbbbbbbb…) runs torch 2.11.0 and Python 3.12.1, ")
    assert "the daemon torch 2.13.0 and Python 3.11.9" in message and "docs/multi-node.md" in message
    missing = describe_version_mismatch(daemon, {"python": "3.11.2"}, "10.0.0.8")
    assert missing is not None and "cryptotune not installed and torch not installed" in missing


def response(view: ClusterView | None) -> Any:
    owners = {"GPU-0": JOB}
    local = [GpuInfo(index=0, uuid="GPU-0", name="A10", memory_total_mb=24000, memory_used_mb=100)]
    return serde.gpus(local, owners, recommend(local), "", view, "10.0.0.5:6379" if view else "")


def test_list_gpus_without_ray_is_unchanged() -> None:
    result = _convert.gpu_list(response(None))
    assert result.nodes is None
    with_ray = _convert.gpu_list(response(cluster_view([], {}, local_node_id=None)))
    assert with_ray.nodes == [] and with_ray.cluster_note and with_ray.ray_address == "10.0.0.5:6379"


def cli_output(view: ClusterView | None, *args: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from cryptotune.cli import main as cli_main

    class FakeClient:
        def list_gpus(self) -> Any:
            return _convert.gpu_list(response(view))

    monkeypatch.setattr(cli_main.CliContext, "client", lambda self: FakeClient())
    result = CliRunner().invoke(
        cli_main.cli, [*args, "list-gpus"], catch_exceptions=False, env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("attached", [False, True])
def test_list_gpus_json_gains_nodes_only_when_attached(
    attached: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = [GpuInfo(index=0, uuid="GPU-0", name="A10", memory_total_mb=24000, memory_used_mb=100)]
    view = cluster_view(ray_nodes(), placement_groups(), local_node_id=HEAD, local_gpus=local)
    document = json.loads(cli_output(view if attached else None, "--json", monkeypatch=monkeypatch))
    assert {"gpus", "recommendation", "note"} <= set(document)
    if not attached:
        assert "nodes" not in document
        return
    nodes = document["nodes"]
    assert [n["node_id"] for n in nodes] == [HEAD, WORKER, GONE]
    for node in nodes:
        assert {"node_id", "address", "gpus", "cpus", "local"} <= set(node)
    assert [n["local"] for n in nodes] == [True, False, False]
    assert nodes[1]["gpus"][0]["name"] == "H100" and nodes[1]["cpus"] == 32
    assert nodes[1]["held_by"][0] == {"job_id": JOB, "gpus": 2.0, "cpus": 2.0}


def test_list_gpus_table_shows_each_node_and_who_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    view = cluster_view(ray_nodes(), placement_groups(), local_node_id=HEAD)
    text = cli_output(view, monkeypatch=monkeypatch)
    assert "Ray cluster 10.0.0.5:6379" in text and "this daemon" in text
    assert "10.0.0.7" in text and "H100" in text and "memory unknown" in text
    assert f"{JOB}: 2 GPU, 2 CPU" in text and "another Ray user: 1 GPU" in text
