"""``data_prep``: read, split, render and tokenize the data (cached by content hash)."""

from __future__ import annotations

import logging
from typing import Any

from cryptotune_daemon.config.system_paths import data_cache_dir
from cryptotune_daemon.worker.stages.base import PIPELINE_LOGGER, StageBase

log = logging.getLogger(PIPELINE_LOGGER)


class DataPrepStage(StageBase):
    """The ``data_prep`` stage and its restore."""

    def _data_kwargs(self) -> dict[str, Any]:
        config = self.ctx.config
        return {
            "data_path": self.spec.data_path,
            "display_name": self.spec.data_name,
            "data_format": str(config.data.data_format),
            "tokenizer": self.ctx.tokenizer,
            "cache_dir": data_cache_dir(self.output_dir, config.system.cache_dir, self.spec.cache_dir),
            "data_hash": self.ctx.hashes.data,
            "tokenizer_hash": self.ctx.hashes.tokenizer,
            "max_seq_length": int(config.training.max_seq_length),
        }

    def _data_prep(self) -> None:
        from cryptotune_daemon.training.dataset import prepare_data

        config = self.ctx.config
        max_samples = config.data.max_samples
        data = prepare_data(
            **self._data_kwargs(),
            max_samples=int(max_samples) if max_samples else None,
            seed=int(config.training.seed),
            shuffle=bool(config.data.shuffle_data),
            train_ratio=float(config.data.train_split_ratio),
            eval_ratio=float(config.data.eval_split_ratio),
            warn=self._warn,
        )
        self.ctx.data = data
        self.state.results["split"] = data.split
        self.state.results["data_stats"] = data.stats
        stats = data.stats
        self._log(
            f"data: {stats['records']} records, {stats['duplicates']} duplicates dropped, "
            f"{stats['train_samples']} train / {stats['eval_samples']} eval samples, "
            f"{stats['train_tokens']} train tokens"
        )

    def _restore_data_prep(self) -> bool:
        from cryptotune_daemon.training.dataset import restore_data

        self.ctx.data = restore_data(
            **self._data_kwargs(),
            split=dict(self.state.results.get("split") or {}),
            stats=dict(self.state.results.get("data_stats") or {}),
        )
        return True
