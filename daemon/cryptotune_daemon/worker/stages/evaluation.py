"""``evaluation``: eval loss (overall and per difficulty) and generation checks."""

from __future__ import annotations

import logging
from typing import Any

from cryptotune_daemon.worker.config_mapping import _finite, pad_token_id
from cryptotune_daemon.worker.stages.base import PIPELINE_LOGGER, StageBase

log = logging.getLogger(PIPELINE_LOGGER)


class EvaluationStage(StageBase):
    """The ``evaluation`` stage and its restore."""

    def _autocast(self) -> Any:
        import contextlib

        import torch

        from cryptotune_daemon.training.trainer import precision_dtype

        if self.ctx.dist.device.type == "cuda" and self.ctx.plan.precision in ("bf16", "fp16"):
            return torch.autocast("cuda", dtype=precision_dtype(self.ctx.plan.precision))
        return contextlib.nullcontext()

    def _evaluation(self) -> None:
        from cryptotune_daemon.training.evaluation import compute_eval_loss, generation_eval
        from cryptotune_daemon.training.models import uses_varlen_attention

        config, data, dist = self.ctx.config, self.ctx.data, self.ctx.dist
        if not data.eval:
            self._warn("the eval split is empty (data.eval_split_ratio): evaluation metrics are not computed")
        loss = compute_eval_loss(
            self.ctx.model,
            data.eval,
            batch_size=self.ctx.plan.micro_batch_size,
            pad_token_id=pad_token_id(self.ctx.tokenizer),
            dist=dist,
            autocast=self._autocast,
            row_tokens=int(config.training.max_seq_length),
            single_row=uses_varlen_attention(self.ctx.model),
        )
        step = self.ctx.trainer_state.step
        self.events.emit(
            "eval",
            {
                "step": step,
                "eval_loss": loss.loss,
                "perplexity": loss.perplexity,
                "eval_loss_by_difficulty": loss.by_difficulty,
                "perplexity_by_difficulty": loss.perplexity_by_difficulty,
            },
        )
        sample_size = int(config.training.eval_sample_size)
        generation = generation_eval(
            self.ctx.model,
            self.ctx.tokenizer,
            data.eval[:sample_size],
            max_new_tokens=int(config.training.max_new_tokens),
            dist=dist,
            autocast=self._autocast,
            batch_size=self.ctx.plan.micro_batch_size,
            max_generated_tokens=int(config.training.max_generated_tokens),
        )
        self.events.emit(
            "generation_eval",
            {
                "thinking_format_rate": generation.thinking_format_rate,
                "crypto_term_recall": generation.crypto_term_recall,
                "samples": generation.samples,
                "evaluated": generation.evaluated,
                "generated_tokens": generation.generated_tokens,
            },
        )
        self.state.results["metrics"] = {
            "eval_loss": loss.loss,
            # The state file is JSON: an overflowing (infinite) perplexity is recorded as None.
            "perplexity": _finite(loss.perplexity),
            "eval_loss_by_difficulty": loss.by_difficulty,
            "perplexity_by_difficulty": {k: _finite(v) for k, v in loss.perplexity_by_difficulty.items()},
            "thinking_format_rate": generation.thinking_format_rate,
            "crypto_term_recall": generation.crypto_term_recall,
            "generation_samples": generation.samples,
            "generation_evaluated": generation.evaluated,
            "generation_tokens": generation.generated_tokens,
        }

    def _restore_evaluation(self) -> bool:
        # Metrics live in the state file; _complete reads them from there.
        return "metrics" in self.state.results
