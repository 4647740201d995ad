"""``config_gen``: plan batch size, accumulation, precision and checkpointing; write the resolved config."""

from __future__ import annotations

import logging

from cryptotune_daemon.worker.config_mapping import _flash_attention, plan_outdated, plan_request
from cryptotune_daemon.worker.stages.base import PIPELINE_LOGGER, StageBase

log = logging.getLogger(PIPELINE_LOGGER)


class ConfigGenStage(StageBase):
    """The ``config_gen`` stage and its restore."""

    def _config_gen(self) -> None:
        from cryptotune_daemon.training.models import model_facts
        from cryptotune_daemon.training.planner import detect_device, plan_training

        config, data = self.ctx.config, self.ctx.data
        facts = model_facts(self.ctx.source)
        device = detect_device(self.spec.device, self.world_size)
        request = plan_request(config, self.world_size, varlen_attention=_flash_attention(device.kind))
        plan = plan_training(request, facts, device, [e.length for e in data.train])
        for note in plan.notes:
            self._warn(note)
        self.ctx.plan = plan
        self.state.results["plan"] = plan.to_json()
        self._write_resolved_config()
        stats = data.stats
        self.events.emit(
            "plan",
            {
                "train_samples": len(data.train),
                "eval_samples": len(data.eval),
                "train_tokens": stats.get("train_tokens", sum(e.length for e in data.train)),
                "eval_tokens": stats.get("eval_tokens", sum(e.length for e in data.eval)),
                "steps": plan.total_steps,
                "epochs": plan.epochs,
                "micro_batch_size": plan.micro_batch_size,
                "gradient_accumulation_steps": plan.gradient_accumulation_steps,
                "effective_batch_size": plan.effective_batch_size,
                "world_size": plan.world_size,
                "precision": plan.precision,
                "gradient_checkpointing": plan.gradient_checkpointing,
                "device": plan.device,
                "memory_estimate_mb": plan.memory_estimate_mb,
                "memory_budget_mb": plan.memory_budget_mb,
                "memory_breakdown": plan.memory_breakdown,
                "packing": plan.packing,
                "packed_rows": plan.packed_rows,
                "longest_row_tokens": plan.longest_row_tokens,
                "choice": plan.choice,
                "strategy": plan.strategy,
                "strategies": [dict(row) for row in plan.strategies],
                "model": self.ctx.source.name,
            },
        )

    def _restore_config_gen(self) -> bool:
        from cryptotune_daemon.training.planner import Plan

        plan = Plan.from_json(dict(self.state.results["plan"]))
        if plan_outdated(plan, self.ctx.config):
            # A resume may change the parallel section and the batch split (same effective batch).
            self._log("planning again: the parallel or batch settings changed since the recorded plan")
            return False
        if plan.world_size != self.world_size or plan.device != self.spec.device:
            # The earlier plan was made for other hardware (e.g. a dry run): plan again.
            self._log(
                f"planning again: the recorded plan is for {plan.world_size}×{plan.device}, "
                f"this run has {self.world_size}×{self.spec.device}"
            )
            return False
        self.ctx.plan = plan
        return True
