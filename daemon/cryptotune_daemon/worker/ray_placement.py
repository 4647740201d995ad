"""**Pure**: what a job on Ray asks the cluster for, what it is called there, and what it waits for.

No Ray import: the daemon (namespace), the job driver (``worker/ray_driver.py``) and unit tests share
these decisions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

NAME_PREFIX = "cryptotune"
# Exit code of a driver whose job lost a node (a rank's actor or its node died): the daemon resumes it.
EXIT_NODE_LOST = 75
# The event a driver emits when its placement group is reserved: the daemon moves the job to RUNNING.
PLACED_EVENT = "placed"
# The event a driver emits when a rank's node is lost (data: node, address, rank, message).
NODE_LOST_EVENT = "node_lost"
# The event a driver emits while the cluster lacks room for the job (data: message).
WAITING_EVENT = "waiting"


def namespace_for(state_dir: Path) -> str:
    """The Ray namespace of the daemon with this state dir: two daemons can share one cluster."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return f"{NAME_PREFIX}-{digest}"


def placement_group_name(job_id: str) -> str:
    """The name of the job's placement group (``cryptotune-<job_id>-pg``)."""
    return f"{NAME_PREFIX}-{job_id}-pg"


def actor_name(job_id: str, rank: int) -> str:
    """The name of the actor of one rank (``cryptotune-<job_id>-rank-<rank>``)."""
    return f"{NAME_PREFIX}-{job_id}-rank-{rank}"


@dataclass(frozen=True)
class PlacementRequest:
    """One bundle per rank, reserved all at once (a job never half-starts).

    Attributes:
        bundles: one resource dict per rank (``{"GPU": 1}`` or ``{"CPU": 1}``), rank order.
        strategy: ``STRICT_SPREAD`` with one rank per node, else ``PACK`` (ranks fill nodes).
        nodes: the machines the job asked for (``parallel.nodes``).
    """

    bundles: tuple[dict[str, float], ...]
    strategy: str
    nodes: int

    @property
    def ranks(self) -> int:
        """Ranks (bundles) in the job."""
        return len(self.bundles)

    @property
    def per_node(self) -> int:
        """Ranks on each node."""
        return max(self.ranks // max(self.nodes, 1), 1)

    @property
    def device(self) -> str:
        """``cuda`` for GPU bundles, else ``cpu``."""
        return "cuda" if self.bundles and "GPU" in self.bundles[0] else "cpu"


def placement_request(world_size: int, nodes: int, *, gpus: bool) -> PlacementRequest:
    """The bundles of a job of ``world_size`` ranks over ``nodes`` machines.

    One rank per node is STRICT_SPREAD (each bundle on a different node, as the user asked). With
    several ranks per node Ray's PACK fills nodes before it takes more: one bundle per rank keeps a
    rank's resources its own, and PACK keeps ranks that talk most on the same machine.
    """
    resource = {"GPU": 1.0} if gpus else {"CPU": 1.0}
    strategy = "STRICT_SPREAD" if world_size == nodes else "PACK"
    return PlacementRequest(tuple(dict(resource) for _ in range(world_size)), strategy, nodes)


def free_nodes(request: PlacementRequest, available: Sequence[Mapping[str, float]]) -> int:
    """Nodes (given their available resources) that could each hold one node's share of the job."""
    resource, amount = next(iter(request.bundles[0].items())) if request.bundles else ("CPU", 1.0)
    need = amount * request.per_node
    return sum(1 for node in available if node.get(resource, 0.0) >= need)


def waiting_message(request: PlacementRequest, free: int) -> str:
    """What a queued job on Ray waits for, e.g. "waiting for 2 nodes × 1 CPU; the cluster has 1 node free"."""
    resource, amount = next(iter(request.bundles[0].items())) if request.bundles else ("CPU", 1.0)
    per_node = int(amount * request.per_node)
    unit = resource if per_node == 1 else f"{resource}s"
    nodes = f"{request.nodes} node{'s' if request.nodes != 1 else ''}"
    have = f"{free} node{'s' if free != 1 else ''} free"
    return f"waiting for {nodes} × {per_node} {unit}; the cluster has {have}"


def lost_node_message(node: str, address: str, rank: int) -> str:
    """Why a job stopped when a rank's node went away."""
    return f"node {node} ({address}) running rank {rank} was lost"


def bundles_in_rank_order(bundle_nodes: Mapping[int, str]) -> list[int]:
    """The bundle each rank takes so that ranks are numbered node by node (ranks 0…k−1 on one node).

    ``bundle_nodes`` maps each bundle index to the node Ray placed it on (the placement group table's
    ``bundles_to_node_id``). PACK usually fills nodes in bundle order, but Ray does not promise it; HSDP's
    ``(dp_replicate, dp_shard)`` mesh takes consecutive ranks as one machine's shard group, so the order
    is made here: nodes in the order of their first bundle, bundles of a node in index order.
    """
    first: dict[str, int] = {}
    for index in sorted(bundle_nodes):
        first.setdefault(bundle_nodes[index], index)
    return sorted(bundle_nodes, key=lambda index: (first[bundle_nodes[index]], index))
