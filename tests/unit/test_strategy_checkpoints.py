"""Checkpoints are strategy-independent, and those written before strategies still resume."""

from __future__ import annotations

import torch

from cryptotune_daemon.config import load_config
from cryptotune_daemon.training.checkpoints import Hashes, hash_mismatches
from cryptotune_daemon.training.hashing import config_hash, legacy_config_hash
from cryptotune_daemon.training.strategies.base import OPTIMIZER_FORMAT, by_name_state

BASE = (
    "training:\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 2\n  learning_rate: 0.001\n"
)


def test_a_resume_may_change_the_parallel_section_and_the_batch_split() -> None:
    original = load_config(BASE)
    relaid = load_config(
        "training:\n  per_device_train_batch_size: 4\n  gradient_accumulation_steps: 1\n"
        "  learning_rate: 0.001\n"
        "parallel:\n  strategy: sharded_data_parallel\n  world_size: 2\n  enable_distributed: true\n"
    )
    assert config_hash(original) == config_hash(relaid)
    other_rate = load_config(BASE.replace("0.001", "0.002"))
    assert config_hash(other_rate) != config_hash(original)


def test_checkpoints_hashed_before_strategies_still_match() -> None:
    config = load_config(BASE)
    recorded = Hashes(data="d", config=legacy_config_hash(config), tokenizer="t")
    current = Hashes(
        data="d", config=config_hash(config), tokenizer="t", config_legacy=legacy_config_hash(config)
    )
    assert hash_mismatches(recorded, current) == []
    changed = load_config(BASE.replace("0.001", "0.002"))
    current = Hashes(
        data="d", config=config_hash(changed), tokenizer="t", config_legacy=legacy_config_hash(changed)
    )
    assert hash_mismatches(recorded, current) == ["the config"]


def test_an_index_keyed_optimizer_state_is_read_by_parameter_name() -> None:
    names = ["a.lora_A.weight", "a.lora_B.weight"]
    old = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}, 1: {"exp_avg": torch.zeros(3)}},
        "param_groups": [{"lr": 0.1, "params": [0, 1]}],
    }
    state = by_name_state(old, names)
    assert state["format"] == OPTIMIZER_FORMAT
    assert set(state["state"]) == set(names) and state["state"]["a.lora_B.weight"]["exp_avg"].shape == (3,)
    assert state["param_groups"] == [{"lr": 0.1, "params": names}]
    assert by_name_state(state, names) == state
