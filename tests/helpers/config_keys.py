"""The config keys whose effect only a worker run shows, shared by the every-key tests."""

from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = {"model.model_name": "builtin:tiny-qwen3"}

DRY_RUN_KEYS: dict[str, Any] = {
    "data.train_split_ratio": 0.5,
    "data.eval_split_ratio": 0.5,
    "data.max_samples": 8,
    "data.shuffle_data": False,
    "data.data_format": "sharegpt",
    "system.logging_dir": "./elsewhere-logs",
    "system.cache_dir": "./tokens",
    "system.log_level": "DEBUG",
}
RUN_KEYS = {"training.eval_sample_size": 1, "training.max_new_tokens": 2}
SPLIT_PAIRS = {
    "data.train_split_ratio": "data.eval_split_ratio",
    "data.eval_split_ratio": "data.train_split_ratio",
}
