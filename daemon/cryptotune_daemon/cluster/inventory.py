"""The cluster view of ``list-gpus``: every Ray node, its GPUs and CPUs, and which jobs hold them.

:func:`cluster_view` is pure: it reads ``ray.nodes()``-shaped dicts and
``ray.util.placement_group_table()``-shaped dicts. :func:`read_cluster` is the thin part that asks
Ray (the daemon must be connected already) and reads the GPUs of the other nodes through NVML with a
tiny task on each (:func:`probe_node_gpus`). A job holds what its placement group reserved; the
group's name carries the job id (``cryptotune-<job_id>-…``). Ray reserves GPUs by count, so a
node says how many of its GPUs each job holds, not which indices.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptotune_daemon.gpus import GpuInfo, NvmlInventory

# Placement groups (and actors) of a cryptotune job are named ``cryptotune-<job_id>-…``.
NAME_PREFIX = "cryptotune-"
_JOB_IN_NAME = re.compile(r"^cryptotune-(job-\d{8}-\d{6}-[0-9a-f]+)(?:-.*)?$")
# Placement groups whose reservation is in force (a PENDING one holds nothing yet).
_HOLDING_STATES = frozenset({"CREATED", "PREPARED", "RESCHEDULING"})
# How long list-gpus waits for the other nodes' NVML readings (a node that does not answer shows
# Ray's GPU count instead).
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Hold:
    """What one job (or another Ray user, ``job_id`` empty) holds on a node."""

    job_id: str
    gpus: float
    cpus: float
    placement_group: str = ""


@dataclass(frozen=True)
class ClusterNode:
    """One Ray node.

    Attributes:
        node_id: Ray's node id (hex).
        address: the node's IP address.
        hostname: its host name (may be empty).
        alive: whether Ray sees it alive (dead nodes are listed until Ray forgets them).
        gpus: its GPUs, read through NVML (on the daemon's own node by the daemon, on the others by
            a task there); when a node's reading is missing, one entry per GPU Ray counts (name =
            Ray's accelerator type when known, memory -1 = unknown).
        cpus: the CPUs Ray schedules on it.
        local: whether it is the daemon's own node.
        holds: the jobs holding part of it.
    """

    node_id: str
    address: str
    hostname: str
    alive: bool
    gpus: tuple[GpuInfo, ...]
    cpus: int
    local: bool
    holds: tuple[Hold, ...] = field(default_factory=tuple)

    @property
    def gpus_held(self) -> int:
        return math.ceil(sum(h.gpus for h in self.holds) - 1e-9)

    @property
    def cpus_held(self) -> float:
        return sum(h.cpus for h in self.holds)

    def to_json(self) -> dict[str, Any]:
        """The node as ``list-gpus --json`` prints it (``node_id, address, gpus, cpus, local`` pinned)."""
        return {
            "node_id": self.node_id,
            "address": self.address,
            "hostname": self.hostname,
            "alive": self.alive,
            "gpus": [_gpu_json(g) for g in self.gpus],
            "cpus": self.cpus,
            "local": self.local,
            "held_by": [{"job_id": h.job_id, "gpus": h.gpus, "cpus": h.cpus} for h in self.holds],
        }


@dataclass(frozen=True)
class ClusterView:
    """The nodes of the cluster the daemon is attached to (alive first, the local node first)."""

    nodes: tuple[ClusterNode, ...]
    note: str = ""


def _gpu_json(gpu: GpuInfo) -> dict[str, Any]:
    return {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "memory_total_mb": gpu.memory_total_mb,
        "memory_used_mb": gpu.memory_used_mb,
    }


def job_of(placement_group_name: str) -> str | None:
    """The job id in a cryptotune placement group's name; None for another Ray user's group."""
    match = _JOB_IN_NAME.match(placement_group_name or "")
    if match:
        return match.group(1)
    if placement_group_name.startswith(NAME_PREFIX):
        rest = placement_group_name[len(NAME_PREFIX) :]
        return rest or None
    return None


def _number(resources: Mapping[str, Any], *names: str) -> float:
    for name in names:
        value = resources.get(name)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def holds_by_node(placement_groups: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Hold]]:
    """Per node id, what each placement group in force reserved there (one ``Hold`` per group)."""
    held: dict[str, dict[str, list[float]]] = {}
    names: dict[str, str] = {}
    for group_id, group in placement_groups.items():
        if str(group.get("state", "")) not in _HOLDING_STATES:
            continue
        bundles: Mapping[Any, Mapping[str, Any]] = group.get("bundles") or {}
        where: Mapping[Any, str] = group.get("bundles_to_node_id") or {}
        for index, resources in bundles.items():
            node = where.get(index) or where.get(str(index)) or ""
            if not node or set(node) == {"f"}:  # not placed (Ray's nil id is all f's)
                continue
            totals = held.setdefault(node, {}).setdefault(group_id, [0.0, 0.0])
            totals[0] += _number(resources, "GPU")
            totals[1] += _number(resources, "CPU")
            names[group_id] = str(group.get("name") or "")
    result: dict[str, list[Hold]] = {}
    for node, groups in held.items():
        result[node] = [
            Hold(job_id=job_of(names[g]) or "", gpus=gpus, cpus=cpus, placement_group=names[g] or g)
            for g, (gpus, cpus) in sorted(groups.items(), key=lambda item: names[item[0]])
        ]
    return result


def _counted_gpus(count: int, resources: Mapping[str, Any]) -> tuple[GpuInfo, ...]:
    """GPUs known only by Ray's count (a remote node): the accelerator type as the name."""
    kinds = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
    name = kinds[0] if kinds else "GPU"
    return tuple(
        GpuInfo(index=i, uuid="", name=name, memory_total_mb=-1, memory_used_mb=-1) for i in range(count)
    )


def cluster_view(
    nodes: Iterable[Mapping[str, Any]],
    placement_groups: Mapping[str, Mapping[str, Any]],
    *,
    local_node_id: str | None,
    local_gpus: Iterable[GpuInfo] = (),
    node_gpus: Mapping[str, Sequence[GpuInfo]] | None = None,
) -> ClusterView:
    """The cluster view from Ray's tables.

    Args:
        nodes: ``ray.nodes()``: ``NodeID``, ``Alive``, ``NodeManagerAddress``,
            ``NodeManagerHostname``, ``Resources`` (``CPU``, ``GPU``, ``accelerator_type:…``).
        placement_groups: ``ray.util.placement_group_table()``: by id, ``name``, ``state``,
            ``bundles`` (index → resources) and ``bundles_to_node_id`` (index → node id).
        local_node_id: the daemon's own node (None when it is not a node of the cluster).
        local_gpus: the daemon's own GPUs (NVML), shown for its node instead of Ray's count.
        node_gpus: other nodes' GPUs read through NVML there (:func:`probe_node_gpus`), by node id.
    """
    local_list = tuple(local_gpus)
    holds = holds_by_node(placement_groups)
    result = []
    for raw in nodes:
        node_id = str(raw.get("NodeID", ""))
        resources: Mapping[str, Any] = raw.get("Resources") or {}
        local = bool(local_node_id) and node_id == local_node_id
        count = int(_number(resources, "GPU"))
        probed = tuple((node_gpus or {}).get(node_id, ()))
        if local and len(local_list) == count:
            gpus = local_list
        elif probed:
            gpus = probed
        else:
            gpus = _counted_gpus(count, resources)
        result.append(
            ClusterNode(
                node_id=node_id,
                address=str(raw.get("NodeManagerAddress", "")),
                hostname=str(raw.get("NodeManagerHostname", "")),
                alive=bool(raw.get("Alive", raw.get("alive", False))),
                gpus=gpus,
                cpus=int(_number(resources, "CPU")),
                local=local,
                holds=tuple(holds.get(node_id, ())),
            )
        )
    result.sort(key=lambda n: (not n.alive, not n.local, n.address, n.node_id))
    alive = [n for n in result if n.alive]
    note = "" if alive else "the Ray cluster has no live node"
    return ClusterView(nodes=tuple(result), note=note)


def node_nvml_gpus() -> list[GpuInfo]:
    """Runs on a node (a Ray task): its GPUs through NVML."""
    return NvmlInventory().list_gpus()


def probe_node_gpus(
    ray: Any, node_ids: Sequence[str], timeout_s: float = PROBE_TIMEOUT_S
) -> dict[str, list[GpuInfo]]:
    """Each node's GPUs, read by a task pinned to it (no CPU or GPU reserved, so a node whose GPUs a
    job holds still answers); nodes that do not answer within ``timeout_s`` are left out."""
    if not node_ids:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(node_nvml_gpus)
    refs = {
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        ).remote(): node_id
        for node_id in node_ids
    }
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in pending:
        ray.cancel(ref, force=True)
    found: dict[str, list[GpuInfo]] = {}
    for ref in ready:
        try:
            found[refs[ref]] = list(ray.get(ref))
        except Exception:  # cryptotune missing there, NVML broken: Ray's count stands
            continue
    return found


def read_cluster(local_gpus: Iterable[GpuInfo] = ()) -> ClusterView:
    """Asks the connected Ray cluster for its nodes and placement groups (blocks: call off the loop).

    Raises:
        RuntimeError: Ray is not connected (``ray.init`` was not called in this process).
    """
    import importlib

    # Typed as Any: Ray's stubs are partial, and it is an optional extra.
    ray: Any = importlib.import_module("ray")
    placement_group_table = importlib.import_module("ray.util").placement_group_table
    if not ray.is_initialized():
        raise RuntimeError("the daemon is not connected to a Ray cluster")
    try:
        local = ray.get_runtime_context().get_node_id()
    except Exception:  # a Ray Client connection has no node of its own
        local = None
    nodes = ray.nodes()
    remote_gpu_nodes = [
        str(n.get("NodeID"))
        for n in nodes
        if n.get("Alive") and n.get("NodeID") != local and _number(n.get("Resources") or {}, "GPU") > 0
    ]
    return cluster_view(
        nodes,
        placement_group_table(),
        local_node_id=local,
        local_gpus=local_gpus,
        node_gpus=probe_node_gpus(ray, remote_gpu_nodes),
    )
