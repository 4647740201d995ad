"""The stage runner: init → data_prep → config_gen → env_setup → training → evaluation → complete."""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from cryptotune_daemon.config.strategies import refuse_unsupported
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.checkpoints import (
    CheckpointInfo,
    Hashes,
    find_checkpoint,
    newest_verified,
    refuse_if_changed,
    remove_checkpoints,
    remove_temp_dirs,
)
from cryptotune_daemon.training.hashing import (
    config_differences,
    config_fingerprint,
    config_hash,
    data_hash,
    legacy_config_hash,
)
from cryptotune_daemon.training.oom_relaunch import write_request
from cryptotune_daemon.worker.events import EventWriter
from cryptotune_daemon.worker.spec import JobSpec
from cryptotune_daemon.worker.state import STAGES, PipelineState, read_state, write_state

if TYPE_CHECKING:
    from cryptotune_daemon.config import CryptotuneConfig
    from cryptotune_daemon.training.dataset import PreparedData
    from cryptotune_daemon.training.distributed import DistContext
    from cryptotune_daemon.training.models import ModelSource
    from cryptotune_daemon.training.oom import OomRecovery
    from cryptotune_daemon.training.planner import Plan, PlanRequest
    from cryptotune_daemon.training.trainer import TrainerSettings, TrainerState

log = logging.getLogger(__name__)

RESOLVED_CONFIG = "resolved_config.yaml"
REPORT_FILE = "report.json"
ADAPTER_DIR = "adapter"
EXIT_FAILED = 1
EXIT_CANCELLED = 128 + signal.SIGTERM


class JobCancelled(BaseException):
    """Raised from the SIGTERM handler; a BaseException so ``except Exception`` cannot swallow it."""


def _raise_cancelled(signum: int, _frame: FrameType | None) -> None:
    # A second signal must not interrupt the short cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise JobCancelled(signal.Signals(signum).name)


class WorkerContext:
    """What stages hand to later stages within one process; each field is set by the stage that
    produces it (or restores it on resume) before any later stage reads it."""

    config: CryptotuneConfig
    source: ModelSource
    tokenizer: Any
    hashes: Hashes
    data: PreparedData
    plan: Plan
    dist: DistContext
    model: Any
    trainer_state: TrainerState
    resumed_from_step: int | None = None
    tokens_per_second: float | None = None


def _world_from_env(default: int = 1) -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", str(default)))


class Pipeline:
    """Runs one job's stages in this process.

    Each stage's completion (and what later stages need from it) is recorded in
    ``pipeline_state.json``; a resumed job restores completed stages (``stage_skipped``) and runs
    from the first incomplete one. ``env_setup`` prepares this process, so it always runs.
    Only rank 0 writes files and events; every rank runs every stage.

    Args:
        spec: the job spec.
        events: the event writer (a disabled one is created for ranks other than 0).
        world_size: ranks in the job (defaults to ``WORLD_SIZE`` from torchrun, else 1).
    """

    def __init__(
        self, spec: JobSpec, *, events: EventWriter | None = None, world_size: int | None = None
    ) -> None:
        self.spec = spec
        self.rank, env_world = _world_from_env()
        self.world_size = world_size or env_world
        self.is_main = self.rank == 0
        self.events = events or EventWriter(spec.events_path, enabled=self.is_main)
        self.ctx = WorkerContext()
        self.output_dir = spec.output_dir
        self._started = time.monotonic()
        self._current = ""
        self._gpu_sampler: Any = None
        self._succeeded = False
        self._complete_started = time.monotonic()
        previous = read_state(self.output_dir) if spec.resume is not None else None
        if previous is not None and previous.pipeline_id and previous.pipeline_id != spec.pipeline_id:
            raise CryptotuneError(
                ErrorCode.RESUME_REFUSED,
                f"{self.output_dir} holds pipeline {previous.pipeline_id}, not {spec.pipeline_id}",
            )
        self.state = previous or PipelineState(pipeline_id=spec.pipeline_id)
        self.state.pipeline_id = spec.pipeline_id
        if spec.resume is not None and spec.resume.step is not None:
            # Resuming a chosen checkpoint re-runs training from it, and everything after.
            self.state.invalidate_from("training")

    # -- bookkeeping -----------------------------------------------------------------------------------

    def _save_state(self) -> None:
        if self.is_main:
            write_state(self.output_dir, self.state)

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.events.warning(message)

    def _log(self, message: str) -> None:
        log.info("%s", message)
        self.events.log(message)

    def _stages(self) -> list[tuple[str, Callable[[], None], Callable[[], bool] | None]]:
        """Each stage with its restore: True when an earlier run's result was restored, False when
        the stage must run again; None for stages that always run (they set up this process or
        produce the final outputs)."""
        return [
            ("init", self._init, self._restore_init),
            ("data_prep", self._data_prep, self._restore_data_prep),
            ("config_gen", self._config_gen, self._restore_config_gen),
            ("env_setup", self._env_setup, None),
            ("training", self._training, self._restore_training),
            ("evaluation", self._evaluation, self._restore_evaluation),
            ("complete", self._complete, None),
        ]

    def run(self) -> int:
        """Runs the stages; returns the process exit code (0 success, 1 failure, 143 cancelled)."""
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            runs = self.state.results.setdefault("runs", [])
            runs.append(
                {
                    "job_id": self.spec.job_id,
                    "started_at": time.time(),
                    "resume": None
                    if self.spec.resume is None
                    else {"step": self.spec.resume.step, "output_dir": str(self.spec.resume.output_dir)},
                }
            )
            self._save_state()
        try:
            for name, run, restore in self._stages():
                self._current = name
                if restore is not None and self.state.completed(name) and restore():
                    self.events.emit(
                        "stage_skipped", {"stage": name, "reason": "completed in an earlier run"}
                    )
                    continue
                self.events.emit("stage_started", {"stage": name})
                self.state.mark(name, "running")
                self._save_state()
                began = time.monotonic()
                run()
                seconds = time.monotonic() - began
                self.state.mark(name, "completed", seconds=seconds)
                self._save_state()
                self.events.emit("stage_completed", {"stage": name, "seconds": round(seconds, 3)})
                if name == "config_gen" and self.spec.dry_run:
                    # The plan event is a dry run's result; `result` marks the clean end.
                    self.events.emit(
                        "result",
                        {
                            "report_path": None,
                            "adapter_path": None,
                            "dry_run": True,
                            "resolved_config_path": str(self.output_dir / RESOLVED_CONFIG),
                        },
                    )
                    self._succeeded = True
                    return 0
            self.events.emit(
                "result",
                {
                    "report_path": str(self.output_dir / REPORT_FILE),
                    "adapter_path": str(self.output_dir / ADAPTER_DIR),
                },
            )
            self._succeeded = True
            return 0
        except JobCancelled:
            log.warning("cancelled during %s", self._current)
            self._mark_current("cancelled", "cancelled")
            return EXIT_CANCELLED
        except BaseException as error:
            traceback.print_exc(file=sys.stderr)
            reason = describe_failure(error, self._current)
            self._mark_current("failed", reason)
            self.events.emit("failed", {"reason": reason, "stage": self._current})
            return EXIT_FAILED
        finally:
            self._shutdown()

    def _mark_current(self, status: str, reason: str) -> None:
        if not self._current:
            return
        try:
            self.state.mark(self._current, status, error=reason)
            self._save_state()
        except OSError:
            log.exception("could not record the %s stage as %s", self._current, status)

    def _shutdown(self) -> None:
        if self._gpu_sampler is not None:
            self._gpu_sampler.stop()
        if self._succeeded:
            from cryptotune_daemon.training.distributed import shutdown_distributed

            # Only after success: with a failed or cancelled peer, tearing the group down can
            # block, and process exit releases it anyway.
            shutdown_distributed()
        self.events.close()

    # -- init ------------------------------------------------------------------------------------------

    def _restore_init(self) -> bool:
        # Cheap, and everything later needs the config, model and tokenizer: redo it (with checks).
        self._init()
        return True

    def _init(self) -> None:
        from cryptotune_daemon.config import load_config
        from cryptotune_daemon.data.tokenizer import load_tokenizer
        from cryptotune_daemon.training.hashing import tokenizer_hash
        from cryptotune_daemon.training.models import resolve_model

        config = load_config(self.spec.config_yaml, self.spec.config_name)
        refuse_unsupported(str(config.parallel.strategy))
        source = resolve_model(
            str(config.model.model_name),
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
            config_legacy=legacy_config_hash(config),
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

    # -- data_prep -------------------------------------------------------------------------------------

    def _data_kwargs(self) -> dict[str, Any]:
        config = self.ctx.config
        return {
            "data_path": self.spec.data_path,
            "display_name": self.spec.data_name,
            "data_format": str(config.data.data_format),
            "tokenizer": self.ctx.tokenizer,
            "cache_dir": self.spec.cache_dir,
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

    # -- config_gen ------------------------------------------------------------------------------------

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

    # -- env_setup -------------------------------------------------------------------------------------

    def _env_setup(self) -> None:
        from cryptotune_daemon.training.distributed import init_distributed
        from cryptotune_daemon.training.trainer import seed_everything

        dist = init_distributed(self.spec.device)
        seed_everything(int(self.ctx.config.training.seed))
        self.ctx.dist = dist
        # Ranks computed data and plan independently: make sure they agree before training.
        mine = (self.ctx.hashes.data, self.ctx.data.split.get("train", [])[:64], self.ctx.plan.total_steps)
        views = dist.all_gather_object(mine)
        if any(view != views[0] for view in views):
            raise CryptotuneError(ErrorCode.INTERNAL, "ranks disagree on the data split or the plan")
        if self.spec.device == "cuda" and self.is_main:
            from cryptotune_daemon.worker.gpu_sampler import GpuSampler

            self._gpu_sampler = GpuSampler(self.events.emit)
            self._gpu_sampler.start()
        self._log(
            f"environment: {dist.world_size} process(es) on {dist.device}, "
            f"seed {self.ctx.config.training.seed}"
        )

    # -- training --------------------------------------------------------------------------------------

    def _training(self) -> None:
        from cryptotune_daemon.training.models import load_base_model
        from cryptotune_daemon.training.oom import (
            OomTestHook,
            TrainingOutOfMemory,
            relaunch_request,
            train_with_oom_recovery,
        )
        from cryptotune_daemon.training.trainer import LoraTrainer, precision_dtype

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
        oom_test_hook = OomTestHook.from_env()  # unset outside tests

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
                oom_test_hook=oom_test_hook,
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

    def _write_resolved_config(self) -> None:
        import yaml

        if self.is_main:
            resolved = resolved_config(self.state.results["config_fingerprint"], self.ctx.plan)
            (self.output_dir / RESOLVED_CONFIG).write_text(
                yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8"
            )

    def _load_trained_model(self, checkpoint: CheckpointInfo | None) -> Any:
        """The base model with ``checkpoint``'s adapter, whole on every rank (for eval and export)."""
        import peft

        from cryptotune_daemon.training.models import load_base_model
        from cryptotune_daemon.training.trainer import ADAPTER_SUBDIR, precision_dtype

        if checkpoint is None:
            raise CryptotuneError(ErrorCode.INTERNAL, "training ended without a verified final checkpoint")
        dist = self.ctx.dist
        dtype = precision_dtype(self.ctx.plan.precision if dist.device.type == "cuda" else "fp32")
        base = load_base_model(self.ctx.source, dtype=dtype, device=dist.device)
        with warnings.catch_warnings():
            # peft probes the deprecated `is_gradient_checkpointing` attribute; nothing to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return peft.PeftModel.from_pretrained(base, str(checkpoint.path / ADAPTER_SUBDIR))

    def _restore_training(self) -> bool:
        import json

        from cryptotune_daemon.training.trainer import TRAINER_STATE_FILE, TrainerState

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

    # -- evaluation ------------------------------------------------------------------------------------

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
        )
        self.events.emit(
            "generation_eval",
            {
                "thinking_format_rate": generation.thinking_format_rate,
                "crypto_term_recall": generation.crypto_term_recall,
                "samples": generation.samples,
                "evaluated": generation.evaluated,
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
        }

    def _restore_evaluation(self) -> bool:
        # Metrics live in the state file; _complete reads them from there.
        return "metrics" in self.state.results

    # -- complete --------------------------------------------------------------------------------------

    def _complete(self) -> None:
        from cryptotune_daemon.training.report import peak_memory_mb, write_report

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
                "generation_evaluated": metrics.get("generation_evaluated", 0),
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
                "strategy": state.strategy,
                "mesh": self.state.results.get("mesh") or {"dp": dist.world_size},
                "micro_batch_size": plan.micro_batch_size,
                "gradient_accumulation_steps": plan.gradient_accumulation_steps,
                "effective_batch_size": plan.effective_batch_size,
                "gradient_checkpointing": plan.gradient_checkpointing,
                "oom_recoveries": list(self.state.results.get("oom_recoveries", [])),
                "data_hash": self.ctx.hashes.data,
                "config_hash": self.ctx.hashes.config,
                "tokenizer_hash": self.ctx.hashes.tokenizer,
                "generation_samples": metrics.get("generation_samples") or [],
            }
            write_report(self.output_dir, report, state.loss_history, state.eval_history)
        dist.barrier()


# -- config → settings -----------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    """``value``, or None when it is None or not finite."""
    return value if value is not None and math.isfinite(value) else None


def _auto(value: Any) -> Any:
    """None for ``auto`` (or unset), else the value."""
    return None if value is None or (isinstance(value, str) and value.lower() == "auto") else value


def _targets(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    return tuple(str(t) for t in value)


def _flash_attention(device_kind: str) -> bool:
    """Whether training on ``device_kind`` will attend with FlashAttention (no SDPA mask to plan for)."""
    if device_kind != "cuda":
        return False
    import torch

    from cryptotune_daemon.training.models import VARLEN_ATTENTION, attention_implementation

    return attention_implementation(torch.device("cuda"), torch.bfloat16) in VARLEN_ATTENTION


def plan_request(config: CryptotuneConfig, world_size: int, *, varlen_attention: bool = False) -> PlanRequest:
    """The planner's input from the config (``auto`` becomes None)."""
    from cryptotune_daemon.training.planner import DEFAULT_EFFECTIVE_BATCH, PlanRequest

    training, lora = config.training, config.lora
    micro = _auto(training.per_device_train_batch_size)
    accumulation = _auto(training.gradient_accumulation_steps)
    checkpointing = _auto(training.gradient_checkpointing)
    return PlanRequest(
        micro_batch_size=int(micro) if micro is not None else None,
        gradient_accumulation_steps=int(accumulation) if accumulation is not None else None,
        gradient_checkpointing=bool(checkpointing) if checkpointing is not None else None,
        fp16=bool(training.fp16),
        bf16=bool(training.bf16),
        num_train_epochs=float(training.num_train_epochs),
        max_steps=int(training.max_steps),
        warmup_ratio=float(training.warmup_ratio),
        lora_rank=int(lora.rank),
        lora_target_modules=_targets(lora.target_modules),
        world_size=world_size,
        effective_batch_size=DEFAULT_EFFECTIVE_BATCH,
        prefer_memory=str(lora.optimization_strategy) == "memory",
        max_seq_length=int(training.max_seq_length),
        packing=True,
        varlen_attention=varlen_attention,
        strategy=str(config.parallel.strategy),
        tensor_parallel_size=int(config.parallel.tensor_parallel_size),
    )


def plan_outdated(plan: Plan, config: CryptotuneConfig) -> bool:
    """Whether the config sets a strategy, micro-batch or accumulation other than ``plan``'s."""
    strategy = str(config.parallel.strategy)
    micro = _auto(config.training.per_device_train_batch_size)
    accumulation = _auto(config.training.gradient_accumulation_steps)
    return (
        strategy not in ("auto", plan.strategy)
        or (micro is not None and int(micro) != plan.micro_batch_size)
        or (accumulation is not None and int(accumulation) != plan.gradient_accumulation_steps)
    )


def trainer_settings(config: CryptotuneConfig, plan: Plan) -> TrainerSettings:
    """The trainer's fully resolved settings from the config and the plan."""
    from cryptotune_daemon.training.trainer import TrainerSettings

    training, lora, data = config.training, config.lora, config.data
    return TrainerSettings(
        learning_rate=float(training.learning_rate),
        weight_decay=float(training.weight_decay),
        lr_scheduler_type=str(training.lr_scheduler_type),
        warmup_steps=int(plan.warmup_steps),
        max_grad_norm=float(training.max_grad_norm or 0.0),
        total_steps=int(plan.total_steps),
        micro_batch_size=int(plan.micro_batch_size),
        gradient_accumulation_steps=int(plan.gradient_accumulation_steps),
        precision=str(plan.precision),
        gradient_checkpointing=bool(plan.gradient_checkpointing),
        seed=int(training.seed),
        lora_rank=int(lora.rank),
        lora_alpha=float(lora.alpha),
        lora_dropout=float(lora.dropout),
        lora_target_modules=_targets(lora.target_modules),
        logging_steps=int(training.logging_steps),
        save_strategy=str(training.save_strategy),
        save_steps=int(training.save_steps or 0),
        eval_strategy=str(training.eval_strategy),
        eval_steps=int(training.eval_steps or 0),
        shuffle=bool(data.shuffle_data),
        max_seq_length=int(training.max_seq_length),
        strategy=plan.strategy,
    )


def resolved_config(fingerprint: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The config with every ``auto`` replaced by what was chosen, plus the plan."""
    resolved = {k: dict(v) if isinstance(v, dict) else v for k, v in fingerprint.items()}
    training = resolved.setdefault("training", {})
    training["per_device_train_batch_size"] = plan.micro_batch_size
    training["gradient_accumulation_steps"] = plan.gradient_accumulation_steps
    training["gradient_checkpointing"] = plan.gradient_checkpointing
    training["bf16"] = plan.precision == "bf16"
    training["fp16"] = plan.precision == "fp16"
    resolved["plan"] = plan.to_json()
    return resolved


def pad_token_id(tokenizer: Any) -> int:
    """The padding id (``<|endoftext|>`` for Qwen3)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))


# -- failure messages ------------------------------------------------------------------------------------


def describe_failure(error: BaseException, stage: str) -> str:
    """A reason a user understands (never a traceback)."""
    if isinstance(error, CryptotuneError):
        return error.message
    name = type(error).__name__
    if name == "OutOfMemoryError":
        return (
            f"out of GPU memory during {stage}: lower training.per_device_train_batch_size or "
            "max_seq_length, or enable gradient_checkpointing"
        )
    if isinstance(error, MemoryError):
        return f"out of memory during {stage}: lower training.per_device_train_batch_size or max_seq_length"
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" at {error.filename}" if error.filename else ""
        return (
            f"the disk is full{where} during {stage}: free space (old checkpoints live in "
            "OUTPUT_DIR/checkpoints), then continue with --resume PIPELINE_ID"
        )
    if name in ("DistBackendError", "DistNetworkError") or "ProcessGroup" in str(error)[:200]:
        return f"a peer training process failed during {stage} (see the job log for the first error)"
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{stage} failed: {name}: {first_line}" if first_line else f"{stage} failed: {name}"


def _events_path_of(spec_path: Path) -> Path | None:
    """The spec's ``events_path``, read leniently from a spec that failed validation."""
    import json

    try:
        raw = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = raw.get("events_path") if isinstance(raw, dict) else None
    return Path(value) if isinstance(value, str) and value else None


def main(spec_path: Path) -> int:
    """Runs a job from its spec file; returns the exit code."""
    from cryptotune_daemon.worker.spec import load_spec

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _raise_cancelled)
    signal.signal(signal.SIGINT, _raise_cancelled)
    try:
        spec = load_spec(spec_path)
        pipeline = Pipeline(spec)
    except JobCancelled:
        return EXIT_CANCELLED
    except CryptotuneError as error:
        # No pipeline yet: still report through the events file if the spec names one.
        print(f"cryptotune worker: {error.message}", file=sys.stderr)
        events_path = _events_path_of(spec_path)
        if events_path is not None and _world_from_env()[0] == 0:
            writer = EventWriter(events_path)
            writer.emit("failed", {"reason": error.message, "stage": "init"})
            writer.close()
        return EXIT_FAILED
    return pipeline.run()
