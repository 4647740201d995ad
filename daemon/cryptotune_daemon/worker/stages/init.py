"""``init``: parse the config, resolve the model, load the tokenizer, hash what the run is computed from."""

from __future__ import annotations

import logging

from cryptotune_daemon.config.schema import SUPPORTED_STRATEGIES
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.checkpoints import (
    Hashes,
    refuse_if_changed,
)
from cryptotune_daemon.training.hashing import config_differences, config_fingerprint, config_hash, data_hash
from cryptotune_daemon.worker.stages.base import StageBase

log = logging.getLogger(__name__)


class InitStage(StageBase):
    """The ``init`` stage and its restore."""

    def _restore_init(self) -> bool:
        # Cheap, and everything later needs the config, model and tokenizer: redo it (with checks).
        self._init()
        return True

    def _init(self) -> None:
        from cryptotune_daemon.config import load_config
        from cryptotune_daemon.config.report_targets import check_report_to
        from cryptotune_daemon.data.tokenizer import load_tokenizer
        from cryptotune_daemon.training.hashing import tokenizer_hash
        from cryptotune_daemon.training.models import resolve_model

        config = load_config(self.spec.config_yaml, self.spec.config_name)
        strategy = str(config.parallel.strategy)
        if strategy not in SUPPORTED_STRATEGIES:
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                f"parallel.strategy '{strategy}' is not supported: cryptotune trains LoRA adapters with data "
                "parallelism; set parallel.strategy to data_parallel or auto",
            )
        check_report_to(list(config.training.report_to))
        source = resolve_model(
            str(config.model.model_name),
            hub=str(config.model.hub),
            trust_remote_code=bool(config.model.trust_remote_code),
            allow_remote_code=self.spec.allow_remote_code,
            revision=str(config.model.model_revision),
        )
        if not self.spec.data_path.is_file():
            raise CryptotuneError(ErrorCode.DATA_INVALID, f"data file {self.spec.data_path} does not exist")
        # Hub ids by name, as the data service does (Qwen3 ids share the offline-built tokenizer, so
        # the hash matches); local directories by their resolved path.
        tokenizer = load_tokenizer(
            str(source.path) if source.kind == "local" else source.name, self.spec.cache_dir
        )
        fingerprint = config_fingerprint(config)
        hashes = Hashes(
            data=data_hash(self.spec.data_path),
            config=config_hash(config),
            tokenizer=tokenizer_hash(tokenizer),
        )
        if self.spec.resume is not None and self.state.hashes.data:
            recorded_fp = self.state.results.get("config_fingerprint")
            details = config_differences(recorded_fp, fingerprint) if isinstance(recorded_fp, dict) else []
            refuse_if_changed(self.state.hashes, hashes, "the earlier run of this pipeline", details[:10])
        self.ctx.config, self.ctx.source, self.ctx.tokenizer, self.ctx.hashes = (
            config,
            source,
            tokenizer,
            hashes,
        )
        self.state.hashes = hashes
        self.state.results["config_fingerprint"] = fingerprint
        self.state.results["model"] = {
            "name": source.name,
            "kind": source.kind,
            "path": str(source.path or ""),
        }
