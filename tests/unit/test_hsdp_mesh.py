"""``sharded_data_parallel`` across nodes is HSDP: its mesh, and ranks that cannot be spread evenly."""

from __future__ import annotations

import pytest

from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.strategies import make_strategy


def mesh(world: int, nodes: int) -> dict[str, int]:
    return make_strategy("sharded_data_parallel", DistContext(world_size=world), nodes=nodes).mesh()


def test_one_node_shards_over_every_rank() -> None:
    assert mesh(4, 1) == {"dp_shard": 4}


def test_several_nodes_replicate_across_and_shard_inside() -> None:
    assert mesh(8, 2) == {"dp_replicate": 2, "dp_shard": 4}
    assert mesh(2, 2) == {"dp_replicate": 2, "dp_shard": 1}
    strategy = make_strategy("sharded_data_parallel", DistContext(world_size=8), nodes=2)
    assert strategy.data_parallel_size == 8  # every rank trains its own slice, as under FSDP


def test_ranks_must_spread_evenly_over_the_nodes() -> None:
    with pytest.raises(CryptotuneError) as caught:
        mesh(3, 2)
    assert "parallel.world_size to a multiple of 2" in caught.value.message


def test_other_strategies_keep_their_mesh() -> None:
    assert make_strategy("data_parallel", DistContext(world_size=4), nodes=2).mesh() == {"dp": 4}
