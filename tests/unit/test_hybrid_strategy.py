"""``hybrid_parallel``'s layout arithmetic (its training: tests/integration/test_parallel_strategies.py)."""

from __future__ import annotations

import torch

from cryptotune_daemon.config.strategies import data_parallel_size
from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.strategies import make_strategy
from cryptotune_daemon.training.strategies.hybrid import hybrid_problem


def test_ranks_of_one_tensor_parallel_group_share_a_data_parallel_rank() -> None:
    ranks = [
        make_strategy("hybrid_parallel", DistContext(rank=r, world_size=8), tensor_parallel_size=2)
        for r in range(8)
    ]
    assert [s.data_parallel_rank for s in ranks] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {s.data_parallel_size for s in ranks} == {4} == {data_parallel_size("hybrid_parallel", 8, 2)}
    assert {s.replicas for s in ranks} == {2}
    assert ranks[0].mesh() == {"tp": 2, "dp_shard": 4}
    assert ranks[0].optimizer_options() == {"foreach": False}


def test_one_process_trains_unwrapped() -> None:
    strategy = make_strategy("hybrid_parallel", DistContext(), tensor_parallel_size=2)
    assert strategy.data_parallel_size == 1 and strategy.data_parallel_rank == 0
    module = torch.nn.Linear(2, 2)
    assert strategy.wrap(module) is module


def test_a_mesh_that_cannot_be_two_dimensional_says_what_to_set() -> None:
    assert hybrid_problem(4, 2) is None and hybrid_problem(8, 4) is None
    assert "set parallel.tensor_parallel_size to 2" in (hybrid_problem(4, 4) or "")
    assert "2 or 4" in (hybrid_problem(8, 3) or "")
    assert "run at least 4 processes" in (hybrid_problem(2, 2) or "")
