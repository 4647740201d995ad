"""``training``: LoRA training from the newest verified checkpoint, with out-of-memory recovery."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.layout import ADAPTER_DIR, TRAINER_STATE_FILE
from cryptotune_daemon.training.checkpoints import (
    CheckpointInfo,
    find_checkpoint,
    newest_verified,
    refuse_if_changed,
    remove_checkpoints,
    remove_temp_dirs,
)
from cryptotune_daemon.training.oom_relaunch import write_request
from cryptotune_daemon.worker.config_mapping import pad_token_id, trainer_settings
from cryptotune_daemon.worker.stages.base import PIPELINE_LOGGER, StageBase

if TYPE_CHECKING:
    from cryptotune_daemon.training.oom import OomRecovery
    from cryptotune_daemon.training.trainer import TrainerSettings


log = logging.getLogger(PIPELINE_LOGGER)


class TrainingStage(StageBase):
    """The ``training`` stage and its restore."""

    def _training(self) -> None:
        from cryptotune_daemon.training.models import load_base_model
        from cryptotune_daemon.training.oom import relaunch_request, train_with_oom_recovery
        from cryptotune_daemon.training.trainer import LoraTrainer, TrainingOutOfMemory, precision_dtype

        plan, dist = self.ctx.plan, self.ctx.dist
        resume: CheckpointInfo | None = None
        if self.spec.resume is not None:
            resume = find_checkpoint(self.output_dir, self.spec.resume.step, self._warn)
            if resume is not None:
                refuse_if_changed(resume.hashes, self.ctx.hashes, f"checkpoint {resume.path.name}")
        if self.is_main:
            remove_temp_dirs(self.output_dir)
            if resume is None:
                removed = remove_checkpoints(self.output_dir)
                if removed:
                    self._log(f"removed {removed} checkpoint(s) of an earlier, non-resumed run")
        dist.barrier()
        dtype = precision_dtype(plan.precision if dist.device.type == "cuda" else "fp32")
        faults = self.spec.fault_injection  # none outside tests (faults.py)

        def build(settings: TrainerSettings) -> LoraTrainer:
            return LoraTrainer(
                base_model=load_base_model(self.ctx.source, dtype=dtype, device=dist.device),
                train_examples=self.ctx.data.train,
                eval_examples=self.ctx.data.eval,
                settings=settings,
                hashes=self.ctx.hashes,
                output_dir=self.output_dir,
                dist=dist,
                pad_token_id=pad_token_id(self.ctx.tokenizer),
                emit=self.events.emit,
                oom_test_hook=faults.oom,
                crash_in_checkpoint=faults.crash_in_checkpoint,
            )

        if resume is not None:
            self._log(f"resuming training from checkpoint {resume.path.name} (step {resume.step})")
        settings = self._apply_oom_relaunch(trainer_settings(self.ctx.config, plan), resume)
        try:
            trainer = train_with_oom_recovery(
                build,
                settings,
                resume=resume,
                latest_checkpoint=lambda: newest_verified(self.output_dir, self._warn),
                on_recovery=self._recovered_from_oom,
                # One rank cannot change its batch alone (its peers are blocked in a collective):
                # it asks the daemon to relaunch every rank with the smaller split instead.
                recover=dist.world_size == 1,
            )
        except TrainingOutOfMemory as error:
            if dist.world_size > 1 and self.spec.events_path is not None:
                request = relaunch_request(error, settings, dist.rank)
                write_request(self.spec.events_path.parent, request)
                log.warning("out of memory in process %s: asked the daemon for a relaunch", dist.rank)
            raise
        state = trainer.state
        trainer.cleanup()
        self.ctx.model = trainer.model
        if not trainer.strategy.keeps_whole_model:
            # Sharded weights: evaluation and export use the gathered final checkpoint instead.
            trainer.release()
            self.ctx.model = self._load_trained_model(newest_verified(self.output_dir, self._warn))
        self.ctx.trainer_state = state
        self.ctx.resumed_from_step = trainer.resumed_from_step
        self.ctx.tokens_per_second = trainer.run_tokens / max(trainer.run_seconds, 1e-9)
        self.state.results["mesh"] = trainer.strategy.mesh()
        self.state.results["training"] = {
            "final_step": state.step,
            "trained_tokens": state.trained_tokens,
            "tokens_per_second": self.ctx.tokens_per_second,
            "resumed_from_step": trainer.resumed_from_step,
        }

    def _apply_oom_relaunch(
        self, settings: TrainerSettings, resume: CheckpointInfo | None
    ) -> TrainerSettings:
        """The settings with the smaller split the daemon relaunched this job with, if any."""
        import dataclasses

        from cryptotune_daemon.training.oom import OomRecovery

        oom = self.spec.resume.oom if self.spec.resume is not None else None
        if oom is None or oom.new_micro_batch is None or oom.new_accumulation is None:
            return settings
        if (settings.micro_batch_size, settings.gradient_accumulation_steps) != (
            oom.old_micro_batch,
            oom.old_accumulation,
        ):
            return settings  # applied by an earlier run of this job already
        smaller = dataclasses.replace(
            settings, micro_batch_size=oom.new_micro_batch, gradient_accumulation_steps=oom.new_accumulation
        )
        recovery = OomRecovery(
            step=oom.step,
            old_micro_batch=oom.old_micro_batch,
            new_micro_batch=oom.new_micro_batch,
            old_accumulation=oom.old_accumulation,
            new_accumulation=oom.new_accumulation,
            resumed_from_step=0 if resume is None else resume.step,
        )
        self._recovered_from_oom(recovery, smaller)
        return smaller

    def _recovered_from_oom(self, recovery: OomRecovery, settings: TrainerSettings) -> None:
        """Reports an out-of-memory recovery and records the new split, so a later resume uses it."""
        import dataclasses

        origin = (
            f"checkpoint step-{recovery.resumed_from_step:06d}" if recovery.resumed_from_step else "the start"
        )
        self._warn(
            f"out of memory at step {recovery.step} with micro-batch {recovery.old_micro_batch}: "
            f"continuing from {origin} with micro-batch {recovery.new_micro_batch} × gradient accumulation "
            f"{recovery.new_accumulation} (same effective batch, samples per step and learning-rate schedule)"
        )
        self.events.emit("oom_recovery", recovery.to_json())
        plan = self.ctx.plan
        self.ctx.plan = dataclasses.replace(
            plan,
            micro_batch_size=settings.micro_batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            notes=(
                *plan.notes,
                f"out of memory at step {recovery.step}: micro-batch {recovery.old_micro_batch} -> "
                f"{recovery.new_micro_batch}",
            ),
        )
        self.state.results["plan"] = self.ctx.plan.to_json()
        self.state.results.setdefault("oom_recoveries", []).append(recovery.to_json())
        self._write_resolved_config()
        self._save_state()

    def _load_trained_model(self, checkpoint: CheckpointInfo | None) -> Any:
        """The base model with ``checkpoint``'s adapter, whole on every rank (for eval and export)."""
        import peft

        from cryptotune_daemon.training.models import load_base_model
        from cryptotune_daemon.training.trainer import precision_dtype

        dist = self.ctx.dist
        dtype = precision_dtype(self.ctx.plan.precision if dist.device.type == "cuda" else "fp32")
        with self._final_adapter_on_every_rank(checkpoint) as adapter:
            base = load_base_model(self.ctx.source, dtype=dtype, device=dist.device)
            with warnings.catch_warnings():
                # peft probes the deprecated `is_gradient_checkpointing` attribute; nothing to act on.
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
                )
                return peft.PeftModel.from_pretrained(base, str(adapter))

    @contextlib.contextmanager
    def _final_adapter_on_every_rank(self, checkpoint: CheckpointInfo | None) -> Iterator[Path]:
        """The adapter directory of rank 0's final checkpoint, on this rank.

        Ranks that share the output dir (one machine) read it in place. Where a rank lacks that
        checkpoint — no shared file system, as with ranks on Ray, where only rank 0's files reach the
        output dir — rank 0 sends the adapter's files and the rank reads them from a temporary dir.
        """
        dist = self.ctx.dist
        steps = dist.all_gather_object(None if checkpoint is None else checkpoint.step)
        if steps[0] is None:
            raise CryptotuneError(ErrorCode.INTERNAL, "training ended without a verified final checkpoint")
        if checkpoint is not None and all(step == steps[0] for step in steps):
            yield checkpoint.path / ADAPTER_DIR
            return
        sent: dict[str, bytes] | None = None
        if dist.is_main and checkpoint is not None:
            source = checkpoint.path / ADAPTER_DIR
            sent = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}
        files: dict[str, bytes] = dist.broadcast_object(sent)
        if checkpoint is not None and checkpoint.step == steps[0]:
            yield checkpoint.path / ADAPTER_DIR
            return
        with tempfile.TemporaryDirectory(prefix="cryptotune-final-adapter-") as temp:
            for relative, content in files.items():
                target = Path(temp) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            yield Path(temp)

    def _restore_training(self) -> bool:
        import json

        from cryptotune_daemon.training.trainer import TrainerState

        recorded = dict(self.state.results.get("training") or {})
        checkpoint = newest_verified(self.output_dir, self._warn)
        if checkpoint is None or checkpoint.step != recorded.get("final_step"):
            self._warn("training completed earlier but its final checkpoint is gone: training again")
            return False
        refuse_if_changed(checkpoint.hashes, self.ctx.hashes, f"checkpoint {checkpoint.path.name}")
        self.ctx.model = self._load_trained_model(checkpoint)
        raw = json.loads((checkpoint.path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        self.ctx.trainer_state = TrainerState(**raw)
        self.ctx.resumed_from_step = recorded.get("resumed_from_step")
        self.ctx.tokens_per_second = recorded.get("tokens_per_second")
        return True
