"""``init``: parse the config, resolve the model, load the tokenizer, hash what the run is computed from."""

from __future__ import annotations

import logging
from typing import Any

from cryptotune_daemon.config.strategies import refuse_unsupported, tensor_parallel_degree_problem
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.checkpoints import (
    Hashes,
    refuse_if_changed,
)
from cryptotune_daemon.training.hashing import (
    config_differences,
    config_fingerprint,
    config_hash,
    data_hash,
    legacy_config_hash,
)
from cryptotune_daemon.worker.log_setup import apply_system_logging
from cryptotune_daemon.worker.stages.base import PIPELINE_LOGGER, StageBase

log = logging.getLogger(PIPELINE_LOGGER)

# Under the daemon's cache dir: the remembered hash of its built Qwen3 tokenizer.
TOKENIZER_HASH_MEMO = "tokenizers/qwen3.hash.json"


class InitStage(StageBase):
    """The ``init`` stage and its restore."""

    def _restore_init(self) -> bool:
        # Cheap, and everything later needs the config, model and tokenizer: redo it (with checks).
        self._init()
        return True

    def _check_tensor_parallel_degree(
        self, source: Any, degree: int, strategy: str = "model_parallel"
    ) -> None:
        """Refuses a tensor-parallel degree that does not divide the model's KV heads (CONFIG_INVALID)."""
        from cryptotune_daemon.training.models import load_model_config

        model_config = load_model_config(source)
        text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        heads = int(getattr(text, "num_attention_heads", 1) or 1)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        problem = tensor_parallel_degree_problem(degree, kv_heads, source.name)
        if problem is not None and strategy == "hybrid_parallel":
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                f"parallel.tensor_parallel_size: {problem} (hybrid_parallel splits every layer over "
                "groups of tensor_parallel_size processes; set it to one of those that divides world_size)",
            )
        if problem is not None:
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                f"parallel.world_size: {problem} (model_parallel splits every layer over all "
                f"world_size processes; set parallel.world_size to one of those, or use "
                "data_parallel or sharded_data_parallel)",
            )

    def _check_pipeline_stages(self, source: Any, stages: int) -> None:
        """Refuses more pipeline stages (processes) than the model has decoder layers (CONFIG_INVALID)."""
        from cryptotune_daemon.config.pipeline import pipeline_stages_problem
        from cryptotune_daemon.training.models import load_model_config

        model_config = load_model_config(source)
        text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        problem = pipeline_stages_problem(int(text.num_hidden_layers), stages, source.name)
        if problem is not None:
            raise CryptotuneError(ErrorCode.CONFIG_INVALID, f"parallel.world_size: {problem}")

    def _init(self) -> None:
        from cryptotune_daemon.config import load_config
        from cryptotune_daemon.config.report_targets import check_report_to
        from cryptotune_daemon.data.tokenizer import (
            is_qwen3_tokenizer_model,
            load_tokenizer,
            qwen3_tokenizer_file,
        )
        from cryptotune_daemon.training.hashing import remembered_tokenizer_hash, tokenizer_hash
        from cryptotune_daemon.training.models import resolve_model
        from cryptotune_daemon.training.module_names import check_target_modules

        config = load_config(self.spec.config_yaml, self.spec.config_name)
        apply_system_logging(config.system, self.output_dir, rank=self.rank)
        refuse_unsupported(str(config.parallel.strategy))
        check_report_to(list(config.training.report_to))
        source = resolve_model(
            str(config.model.model_name),
            hub=str(config.model.hub),
            trust_remote_code=bool(config.model.trust_remote_code),
            allow_remote_code=self.spec.allow_remote_code,
            revision=str(config.model.model_revision),
        )
        log.debug("model %s resolved: %s %s", source.name, source.kind, source.path or "")
        check_target_modules(source, tuple(config.lora.target_modules))
        if str(config.parallel.strategy) == "model_parallel" and self.world_size > 1:
            self._check_tensor_parallel_degree(source, self.world_size)
        if str(config.parallel.strategy) == "hybrid_parallel" and self.world_size > 1:
            degree = int(config.parallel.tensor_parallel_size)
            self._check_tensor_parallel_degree(source, degree, "hybrid_parallel")
        if str(config.parallel.strategy) == "pipeline_parallel" and self.world_size > 1:
            self._check_pipeline_stages(source, self.world_size)
        if not self.spec.data_path.is_file():
            raise CryptotuneError(ErrorCode.DATA_INVALID, f"data file {self.spec.data_path} does not exist")
        # Hub ids by name, as the data service does (Qwen3 ids share the offline-built tokenizer, so
        # the hash matches); local directories by their resolved path.
        tokenizer_name = str(source.path) if source.kind == "local" else source.name
        tokenizer = load_tokenizer(tokenizer_name, self.spec.cache_dir)
        if is_qwen3_tokenizer_model(tokenizer_name):
            # The daemon's cached Qwen3 tokenizer: its hash is computed once per build, not per job.
            cache = self.spec.cache_dir
            tokenizer_digest = remembered_tokenizer_hash(
                tokenizer, qwen3_tokenizer_file(cache), cache / TOKENIZER_HASH_MEMO
            )
        else:
            tokenizer_digest = tokenizer_hash(tokenizer)
        fingerprint = config_fingerprint(config)
        hashes = Hashes(
            data=data_hash(self.spec.data_path),
            config=config_hash(config),
            config_legacy=legacy_config_hash(config),
            tokenizer=tokenizer_digest,
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
