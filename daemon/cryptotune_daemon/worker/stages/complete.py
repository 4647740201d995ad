"""``complete``: save the adapter; write report.json, report.md and the loss curve."""

from __future__ import annotations

import logging
import os
import shutil
import time

from cryptotune_daemon.layout import ADAPTER_DIR
from cryptotune_daemon.worker.stages.base import StageBase
from cryptotune_daemon.worker.state import STAGES

log = logging.getLogger(__name__)


class CompleteStage(StageBase):
    """The ``complete`` stage and its restore."""

    def _complete(self) -> None:
        from cryptotune_daemon.training.report import BASE_KEYS, peak_memory_mb, write_report

        self._complete_started = time.monotonic()
        dist = self.ctx.dist
        adapter = self.output_dir / ADAPTER_DIR
        if self.is_main:
            temp = self.output_dir / f".{ADAPTER_DIR}.tmp-{os.getpid()}"
            shutil.rmtree(temp, ignore_errors=True)
            self.ctx.model.save_pretrained(str(temp))
            self.ctx.tokenizer.save_pretrained(str(temp))
            if adapter.exists():
                shutil.rmtree(adapter)
            temp.rename(adapter)
            metrics = dict(self.state.results.get("metrics") or {})
            state = self.ctx.trainer_state
            losses = [float(p[1]) for p in state.loss_history]
            plan = self.ctx.plan
            stage_seconds = {
                s: float(self.state.stages[s]["seconds"])
                for s in STAGES
                if s != "complete" and "seconds" in self.state.stages.get(s, {})
            }
            # This stage is still running: count it up to the report (the event has the final value).
            stage_seconds["complete"] = round(time.monotonic() - self._complete_started, 3)
            report = {
                "pipeline_id": self.spec.pipeline_id,
                "job_id": self.spec.job_id,
                "model": self.ctx.source.name,
                "train_samples": len(self.ctx.data.train),
                "eval_samples": len(self.ctx.data.eval),
                "steps": state.step,
                "train_loss_first": losses[0] if losses else None,
                "train_loss_last": losses[-1] if losses else None,
                "eval_loss": metrics.get("eval_loss"),
                "eval_loss_by_difficulty": metrics.get("eval_loss_by_difficulty") or {},
                "perplexity": metrics.get("perplexity"),
                "perplexity_by_difficulty": metrics.get("perplexity_by_difficulty") or {},
                "thinking_format_rate": metrics.get("thinking_format_rate"),
                "crypto_term_recall": metrics.get("crypto_term_recall"),
                "length_cap_rate": metrics.get("length_cap_rate"),
                "generation_evaluated": metrics.get("generation_evaluated", 0),
                "base": metrics.get("base") or dict.fromkeys(BASE_KEYS),
                "tokens_per_second": self.ctx.tokens_per_second,
                "trained_tokens": state.trained_tokens,
                "peak_memory_mb": peak_memory_mb(dist.device.type),
                "stage_seconds": stage_seconds,
                "wall_seconds": round(time.monotonic() - self._started, 3),
                "adapter_path": str(adapter),
                "resumed_from_step": self.ctx.resumed_from_step,
                "precision": plan.precision,
                "device": dist.device.type,
                "world_size": dist.world_size,
                "micro_batch_size": plan.micro_batch_size,
                "gradient_accumulation_steps": plan.gradient_accumulation_steps,
                "effective_batch_size": plan.effective_batch_size,
                "gradient_checkpointing": plan.gradient_checkpointing,
                "oom_recoveries": list(self.state.results.get("oom_recoveries", [])),
                "data_hash": self.ctx.hashes.data,
                "config_hash": self.ctx.hashes.config,
                "tokenizer_hash": self.ctx.hashes.tokenizer,
                "generation_samples": metrics.get("generation_samples") or [],
                "base_generation_samples": metrics.get("base_generation_samples") or [],
            }
            write_report(self.output_dir, report, state.loss_history, state.eval_history)
        dist.barrier()
