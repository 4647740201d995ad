"""The LoRA trainer: a hand-written loop composed of setup / train / save_checkpoint / cleanup."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from cryptotune_daemon.constants import IGNORE_INDEX
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.faults import OomTestHook
from cryptotune_daemon.layout import ADAPTER_DIR, CHECKPOINTS_DIR, TRAINER_STATE_FILE
from cryptotune_daemon.training.allocator import retain_freed_memory
from cryptotune_daemon.training.batching import (
    collate,
    collate_packed,
    deal_samples,
    epoch_steps,
    split_micro_batches,
)
from cryptotune_daemon.training.checkpoints import CheckpointInfo, Hashes, write_checkpoint
from cryptotune_daemon.training.dataset import Example
from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.evaluation import EvalLoss, compute_eval_loss
from cryptotune_daemon.training.loss import DEFAULT_CHUNK_TOKENS, LossModule
from cryptotune_daemon.training.models import uses_varlen_attention
from cryptotune_daemon.training.strategies import make_strategy

Emit = Callable[[str, Mapping[str, Any]], None]

_PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Version of the data order (:func:`~cryptotune_daemon.training.batching.epoch_steps`). Checkpoints
# without it (1) were trained with length-grouped micro-batches and cannot be continued exactly;
# 2 fixed the order per rank's optimiser step, 3 per global step (the same samples whatever the
# world size). For one process 2 and 3 are the same order.
DATA_ORDER = 3
_SAME_ORDER_ONE_PROCESS = 2


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name (``fp32``, ``bf16``, ``fp16``)."""
    return _PRECISION_DTYPES[precision]


class TrainingOutOfMemory(CryptotuneError):
    """The device ran out of memory during an optimiser step (RESOURCE_EXHAUSTED)."""

    def __init__(self, *, step: int, micro_batch_size: int, gradient_checkpointing: bool) -> None:
        advice = "lower training.max_seq_length" + (
            "" if gradient_checkpointing else " or enable training.gradient_checkpointing"
        )
        if micro_batch_size <= 1:
            message = (
                f"OOM at step {step} with micro-batch 1: not even one sample per forward pass fits in "
                f"memory, so halving the micro-batch cannot help; {advice}, or use a device with more memory"
            )
        else:
            message = (
                f"OOM at step {step} with micro-batch {micro_batch_size}: lower "
                f"training.per_device_train_batch_size, or {advice}"
            )
        super().__init__(ErrorCode.RESOURCE_EXHAUSTED, message)
        self.step = step
        self.micro_batch_size = micro_batch_size


@dataclass(frozen=True)
class TrainerSettings:
    """Everything the loop needs, resolved (no ``auto`` left).

    ``save_strategy``/``eval_strategy`` are ``steps``, ``epoch`` or ``no``; with ``no`` (or a
    non-positive interval) only the final checkpoint is written, and no eval runs mid-training.
    ``packing`` (the default) feeds micro-batches padding-free, packed into rows of at most
    ``max_seq_length`` tokens (0: as long as the longest sample); False pads each micro-batch to its
    longest sample, the plain path kept for comparison. Both give the same loss on the same data.
    ``nodes`` is ``parallel.nodes``: the machines the ranks span (FSDP2 shards inside each, HSDP).
    """

    learning_rate: float
    weight_decay: float
    lr_scheduler_type: str
    warmup_steps: int
    max_grad_norm: float
    total_steps: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    precision: str
    gradient_checkpointing: bool
    seed: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: tuple[str, ...]
    logging_steps: int = 10
    save_strategy: str = "steps"
    save_steps: int = 0
    eval_strategy: str = "no"
    eval_steps: int = 0
    shuffle: bool = True
    eval_batch_size: int = 0
    packing: bool = True
    max_seq_length: int = 0
    loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    strategy: str = "data_parallel"
    tensor_parallel_size: int = 2
    pipeline_schedule: str = "1f1b"
    pipeline_micro_batches: int = 2
    nodes: int = 1

    @property
    def samples_per_step(self) -> int:
        """Samples one rank trains on per optimiser step (micro-batch × accumulation)."""
        return self.micro_batch_size * self.gradient_accumulation_steps


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint so a resume continues exactly.

    Attributes:
        step: optimiser steps done.
        epoch: current epoch (0-based).
        step_in_epoch: optimiser steps of ``epoch`` done: what a resume continues from.
        batch_in_epoch: micro-batches of ``epoch`` consumed by this rank (informational: the
            micro-batch size may change on an out-of-memory recovery, the steps do not).
        trained_tokens: label tokens trained on, over all ranks.
        loss_history: ``[step, loss]`` for every step.
        eval_history: ``[step, eval_loss]`` for every mid-training eval.
        world_size, micro_batch_size, gradient_accumulation_steps, seed, data_order: the data-order
            inputs; a resume must share the seed and the effective batch (micro-batch ×
            accumulation × ``data_parallel_size``), not the world size or the split.
        strategy, data_parallel_size: the parallel strategy that wrote the state and its number of
            data-parallel groups (0 in older checkpoints: DDP, so the world size).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    trained_tokens: int = 0
    loss_history: list[list[float]] = field(default_factory=list)
    eval_history: list[list[float]] = field(default_factory=list)
    world_size: int = 1
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    seed: int = 0
    step_in_epoch: int = 0
    data_order: int = 1
    strategy: str = "data_parallel"
    data_parallel_size: int = 0

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimiser step over the whole job."""
        groups = self.data_parallel_size or self.world_size
        return self.micro_batch_size * self.gradient_accumulation_steps * groups


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain values (loadable with ``weights_only``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restores what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class LoraTrainer:
    """Trains a LoRA adapter on a causal LM, with verified checkpoints and exact resume.

    A hand-written loop rather than ``transformers.Trainer``: its checkpoints are neither atomic
    nor manifest-verified, its resume cannot prove it continues with exactly the next batch, and
    the loss must stay swappable (:mod:`cryptotune_daemon.training.loss`) for packed paths.

    Usage: ``setup(resume)`` once, ``train()``, then ``cleanup()``. Every rank runs the same calls;
    only rank 0 writes files and emits events.
    """

    def __init__(
        self,
        *,
        base_model: Any,
        train_examples: Sequence[Example],
        eval_examples: Sequence[Example],
        settings: TrainerSettings,
        hashes: Hashes,
        output_dir: Path,
        dist: DistContext,
        pad_token_id: int,
        emit: Emit,
        oom_test_hook: OomTestHook | None = None,
        crash_in_checkpoint: int | None = None,
    ) -> None:
        self.base_model = base_model
        self.train_examples = list(train_examples)
        self.eval_examples = list(eval_examples)
        self.settings = settings
        self.hashes = hashes
        self.output_dir = output_dir
        self.dist = dist
        self.pad_token_id = pad_token_id
        self.emit = emit
        self.strategy = make_strategy(
            settings.strategy,
            dist,
            compute_dtype=_PRECISION_DTYPES.get(settings.precision),
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_schedule=settings.pipeline_schedule,
            pipeline_micro_batches=settings.pipeline_micro_batches,
            nodes=settings.nodes,
        )
        self.state = TrainerState(
            world_size=dist.world_size,
            micro_batch_size=settings.micro_batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            seed=settings.seed,
            data_order=DATA_ORDER,
            strategy=self.strategy.name,
            data_parallel_size=self.strategy.data_parallel_size,
        )
        self.oom_test_hook = oom_test_hook
        self.crash_in_checkpoint = crash_in_checkpoint
        self.resumed_from_step: int | None = None
        # Label tokens trained and seconds spent by train() in this trainer (not counting a resume's past).
        self.run_tokens = 0
        self.run_seconds = 0.0
        self.model: Any = None
        self._loss_module: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: Any = None
        self._scaler: torch.amp.GradScaler | None = None
        self._epoch_cache: tuple[int, list[list[int]], list[int]] | None = None
        self._lengths = [e.length for e in self.train_examples]
        longest = max(self._lengths, default=1)
        self._row_tokens = max(settings.max_seq_length, longest)
        self._single_row = False

    # -- setup ---------------------------------------------------------------------------------------

    def setup(self, resume: CheckpointInfo | None = None) -> None:
        """Wraps the model with LoRA and the strategy, builds optimiser/scheduler/scaler, loads ``resume``.

        Raises:
            CryptotuneError: RESUME_REFUSED when the checkpoint was trained with another data order.
        """
        import peft
        from transformers import get_scheduler

        settings = self.settings
        seed_everything(settings.seed)  # LoRA init must not depend on what ran before
        if self.dist.device.type == "cpu":
            retain_freed_memory()  # every step would page-fault its activations in again otherwise
        if settings.gradient_checkpointing:
            # Non-reentrant checkpointing works with frozen inputs; input grads are still enabled
            # because peft's reentrant fallbacks need them.
            enable = getattr(self.base_model, "activation_checkpointing_enable", None)
            if enable is not None:  # transformers ≥ 5.2x renamed it
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.base_model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            self.base_model.enable_input_require_grads()
        self.base_model.config.use_cache = False
        lora_config = peft.LoraConfig(
            r=settings.lora_rank,
            # peft annotates alpha as int but only divides by it; fractional alphas are valid.
            lora_alpha=cast(int, settings.lora_alpha),
            lora_dropout=settings.lora_dropout,
            target_modules=_target_modules(settings.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # peft probes the deprecated `is_gradient_checkpointing` attribute; nothing to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.model = peft.get_peft_model(self.base_model, lora_config)
        self.model.train()
        # FlashAttention's varlen kernel reads sample boundaries only from a batch of one row.
        self._single_row = uses_varlen_attention(self.base_model)
        # Checkpoints hold whole tensors by name: load them before the strategy shards anything.
        resumed = self._load_adapter(resume) if resume is not None else None
        self._loss_module = self.strategy.wrap(
            LossModule(self.model, chunk_tokens=settings.loss_chunk_tokens)
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._optimizer = torch.optim.AdamW(
            params,
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
            **self.strategy.optimizer_options(),
        )
        self._scheduler = get_scheduler(
            settings.lr_scheduler_type,
            optimizer=self._optimizer,
            num_warmup_steps=settings.warmup_steps,
            num_training_steps=settings.total_steps,
        )
        if settings.precision == "fp16" and self.dist.device.type == "cuda":
            self._scaler = torch.amp.GradScaler("cuda")
        if resume is not None and resumed is not None:
            self._load_training_state(resume, resumed)

    def _load_adapter(self, checkpoint: CheckpointInfo) -> TrainerState:
        """Checks that ``checkpoint`` continues this run's data order and loads its adapter (unwrapped)."""
        import peft
        from safetensors.torch import load_file

        path = checkpoint.path
        raw = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        state = TrainerState(**raw)
        # Data order 2 was per rank; with one process it is exactly order 3.
        legacy_same = state.data_order == _SAME_ORDER_ONE_PROCESS and state.world_size == 1
        if state.data_order != DATA_ORDER and not legacy_same:
            raise CryptotuneError(
                ErrorCode.RESUME_REFUSED,
                f"cannot resume from {path.name}: it was written by an earlier cryptotune whose data order "
                "differs, so the run could not continue exactly; start a new pipeline",
            )
        settings = self.settings
        differing = [f"seed: {state.seed} -> {settings.seed}"] if state.seed != settings.seed else []
        # The data order is fixed per global optimiser step, so only the effective batch matters:
        # another strategy, world size or micro-batch × accumulation split of the same effective
        # batch (an out-of-memory recovery halves the micro-batch and doubles accumulation)
        # continues with exactly the same samples.
        effective = settings.samples_per_step * self.strategy.data_parallel_size
        if state.effective_batch_size != effective:
            differing.append(
                f"effective batch: {state.effective_batch_size} -> {effective} "
                f"(per_device_train_batch_size {settings.micro_batch_size} × gradient_accumulation_steps "
                f"{settings.gradient_accumulation_steps} × {self.strategy.data_parallel_size} data-parallel "
                "group(s))"
            )
        if differing:
            raise CryptotuneError(
                ErrorCode.RESUME_REFUSED,
                f"cannot resume from {path.name}: the data order would change ({'; '.join(differing)}); "
                "resume with the same seed and effective batch, or start a new pipeline",
            )
        weights = load_file(
            str(path / ADAPTER_DIR / "adapter_model.safetensors"), device=str(self.dist.device)
        )
        result = peft.set_peft_model_state_dict(self.model, weights)
        mismatched = [
            k
            for k in [*getattr(result, "unexpected_keys", []), *getattr(result, "missing_keys", [])]
            if "lora_" in k
        ]
        if mismatched:
            raise CryptotuneError(
                ErrorCode.RESUME_REFUSED,
                f"checkpoint {path.name} does not match the LoRA settings ({mismatched[0]}); "
                "start a new pipeline",
            )
        return state

    def _load_training_state(self, checkpoint: CheckpointInfo, state: TrainerState) -> None:
        """Loads optimiser, scheduler, scaler and RNG states (after the strategy wrapped the model)."""
        path, settings = checkpoint.path, self.settings
        assert self._optimizer is not None
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        self.strategy.load_optimizer_state(self.model, self._optimizer, saved)
        self._scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if self._scaler is not None and (path / "scaler.pt").exists():
            self._scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        rng_file = path / f"rng_state_{self.dist.rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=True), self.dist.device)
        state.micro_batch_size = settings.micro_batch_size
        state.gradient_accumulation_steps = settings.gradient_accumulation_steps
        state.world_size = self.dist.world_size
        state.strategy = self.strategy.name
        state.data_parallel_size = self.strategy.data_parallel_size
        state.data_order = DATA_ORDER
        self.state = state
        self.resumed_from_step = state.step

    # -- helpers ---------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for forward passes (CUDA bf16/fp16; nothing on CPU/fp32)."""
        if self.dist.device.type == "cuda" and self.settings.precision in ("bf16", "fp16"):
            return torch.autocast("cuda", dtype=precision_dtype(self.settings.precision))
        return contextlib.nullcontext()

    def _steps(self, epoch: int) -> list[list[int]]:
        """This rank's share of every optimiser step of ``epoch``."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:

            def share(rank: int) -> list[list[int]]:
                return epoch_steps(
                    self._lengths,
                    samples_per_step=self.settings.samples_per_step,
                    seed=self.settings.seed,
                    epoch=epoch,
                    rank=rank,
                    world_size=self.strategy.data_parallel_size,
                    shuffle=self.settings.shuffle,
                )

            mine = share(self.strategy.data_parallel_rank)
            # Rank 0's share is the largest: every rank runs as many micro-batches as it needs.
            largest = (
                [len(s) for s in share(0)] if self.strategy.data_parallel_rank else [len(s) for s in mine]
            )
            self._epoch_cache = (epoch, mine, largest)
        return self._epoch_cache[1]

    def _micro_batches_in_step(self, step_in_epoch: int) -> int:
        assert self._epoch_cache is not None
        return max(math.ceil(self._epoch_cache[2][step_in_epoch] / self.settings.micro_batch_size), 1)

    def collate_batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """One micro-batch as model inputs: packed (the default) or padded (``settings.packing``)."""
        if self.settings.packing:
            return collate_packed(examples, self.pad_token_id, self._row_tokens, single_row=self._single_row)
        return collate(examples, self.pad_token_id)

    def _due(self, strategy: str, interval: int, ended_epoch: bool) -> bool:
        if strategy == "epoch":
            return ended_epoch
        return strategy == "steps" and interval > 0 and self.state.step % interval == 0

    # -- training --------------------------------------------------------------------------------------

    def train(self) -> TrainerState:
        """Runs optimiser steps until ``total_steps``, emitting progress, eval and checkpoint events.

        Raises:
            TrainingOutOfMemory: on CUDA out-of-memory (RESOURCE_EXHAUSTED; the caller may recover).
            CryptotuneError: INTERNAL when the loss diverges.
        """
        assert self._loss_module is not None and self._optimizer is not None, "call setup() first"
        settings, state = self.settings, self.state
        started, start_step, run_tokens = time.monotonic(), state.step, 0
        while state.step < settings.total_steps:
            steps = self._steps(state.epoch)
            if state.step_in_epoch >= len(steps):
                state.epoch += 1
                state.step_in_epoch = 0
                state.batch_in_epoch = 0
                continue
            group = split_micro_batches(steps[state.step_in_epoch], settings.micro_batch_size)
            # A rank with a smaller share of the step (the last, shorter one) still takes part in
            # every collective: it runs padding micro-batches that contribute nothing.
            padding = self._micro_batches_in_step(state.step_in_epoch) - len(group)
            try:
                loss, grad_norm, lr, tokens = self._step(group, padding)
            except torch.OutOfMemoryError as error:
                # Partial gradients of this step are dropped; the optimiser has not stepped.
                self._optimizer.zero_grad(set_to_none=True)
                raise TrainingOutOfMemory(
                    step=state.step + 1,
                    micro_batch_size=settings.micro_batch_size,
                    gradient_checkpointing=settings.gradient_checkpointing,
                ) from error
            state.step += 1
            state.step_in_epoch += 1
            state.batch_in_epoch += len(group)
            state.trained_tokens += tokens
            run_tokens += tokens
            self.run_tokens = run_tokens
            self.run_seconds = time.monotonic() - started
            state.loss_history.append([state.step, loss])
            if not math.isfinite(loss) and self._scaler is None:
                raise CryptotuneError(
                    ErrorCode.INTERNAL,
                    f"training diverged: the loss is {loss} at step {state.step}; "
                    "lower training.learning_rate or set training.max_grad_norm",
                )
            ended_epoch = state.step_in_epoch >= len(steps)
            last = state.step == settings.total_steps
            if (settings.logging_steps > 0 and state.step % settings.logging_steps == 0) or last:
                elapsed = max(time.monotonic() - started, 1e-9)
                done = state.step - start_step
                self.emit(
                    "progress",
                    {
                        "step": state.step,
                        "total_steps": settings.total_steps,
                        "epoch": round(state.epoch + state.step_in_epoch / max(len(steps), 1), 4),
                        "loss": loss,
                        "learning_rate": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_second": run_tokens / elapsed,
                        "eta_seconds": (settings.total_steps - state.step) * elapsed / max(done, 1),
                    },
                )
            if self.eval_examples and self._due(settings.eval_strategy, settings.eval_steps, ended_epoch):
                result = self.evaluate(self.eval_examples)
                if result.loss is not None:
                    state.eval_history.append([state.step, result.loss])
                self.emit(
                    "eval",
                    {
                        "step": state.step,
                        "eval_loss": result.loss,
                        "perplexity": result.perplexity,
                        "eval_loss_by_difficulty": result.by_difficulty,
                        "perplexity_by_difficulty": result.perplexity_by_difficulty,
                    },
                )
            if last or self._due(settings.save_strategy, settings.save_steps, ended_epoch):
                self.save_checkpoint()
        return state

    def _step(self, group: list[list[int]], padding: int = 0) -> tuple[float, float, float, int]:
        """One optimiser step over a group of micro-batches; returns loss, grad norm, lr, label tokens.

        The loss is normalised by the label tokens of the whole step (every rank, every micro-batch),
        so the gradient and the logged loss are those of one process training on the whole
        effective batch. ``padding`` extra micro-batches (of a sample with weight 0) keep this rank
        in step with ranks that have more micro-batches.
        """
        assert self._loss_module is not None and self._optimizer is not None
        device = self.dist.device
        micro_batches = [self.collate_batch([self.train_examples[i] for i in batch]) for batch in group]
        local_tokens = sum(int((mb["labels"][:, 1:] != IGNORE_INDEX).sum()) for mb in micro_batches)
        weights = [1.0] * len(micro_batches) + [0.0] * padding
        micro_batches += [self.collate_batch(self.train_examples[:1])] * padding
        # Ranks of one tensor- or pipeline-parallel group train the same samples: count them once.
        replicas = self.strategy.replicas
        counted = torch.tensor([local_tokens], device=device, dtype=torch.int64)
        global_tokens = int(self.dist.all_reduce_sum(counted).item()) // replicas
        # Sum over tokens / (global tokens / data-parallel groups): after the strategy averages
        # gradients over those groups this is exactly the mean over every label token of the step.
        scale = self.strategy.data_parallel_size / max(global_tokens, 1)
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        lr = float(self._optimizer.param_groups[0]["lr"])
        if self.strategy.pipelined:
            loss_sum = self._pipeline_steps(group, scale)
            micro_batches, weights = [], []
        for position, (batch, weight) in enumerate(zip(micro_batches, weights, strict=True)):
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            sync = position == len(micro_batches) - 1 or not self.dist.distributed
            context = contextlib.nullcontext() if sync else self.strategy.no_sync(self._loss_module)
            with context:
                hook = self.oom_test_hook
                micro = self.settings.micro_batch_size
                if (
                    hook is not None
                    and position == len(micro_batches) - 1
                    and hook.fails(self.state.step + 1, micro, self.dist.rank)
                ):
                    # After the earlier micro-batches' backward: partial gradients exist, as in a real OOM.
                    raise torch.OutOfMemoryError(
                        f"CUDA out of memory (injected by the fault oom={hook.text()} at step "
                        f"{self.state.step + 1} with micro-batch {micro})"
                    )
                with self.autocast():
                    sums, _ = self._loss_module(**inputs)
                    sums = sums * weight
                    loss = sums.sum() * scale
                if self._scaler is not None:
                    self._scaler.scale(loss).backward()
                else:
                    loss.backward()
            loss_sum += sums.detach().sum()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self._scaler is not None:
            self._scaler.unscale_(self._optimizer)
        max_norm = self.settings.max_grad_norm if self.settings.max_grad_norm > 0 else math.inf
        grad_norm = self.strategy.clip_grad_norm(params, max_norm)
        if self._scaler is not None:
            self._scaler.step(self._optimizer)
            self._scaler.update()
        else:
            self._optimizer.step()
        self._scheduler.step()
        self._optimizer.zero_grad(set_to_none=True)
        total = float(self.dist.all_reduce_sum(loss_sum).item()) / replicas
        return total / max(global_tokens, 1), grad_norm, lr, global_tokens

    def _pipeline_steps(self, group: list[list[int]], scale: float) -> torch.Tensor:
        """The pipeline steps of one optimiser step: each per-device batch of ``group`` cut into the
        strategy's micro-batches (samples dealt longest first, round robin); returns the loss sum."""
        total = torch.zeros((), device=self.dist.device, dtype=torch.float32)
        count = self.strategy.pipeline_micro_batches
        scaler = self._scaler
        for position, batch in enumerate(group):
            hook, micro = self.oom_test_hook, self.settings.micro_batch_size
            if (
                hook is not None
                and position == len(group) - 1
                and hook.fails(self.state.step + 1, micro, self.dist.rank)
            ):
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory (injected by the fault oom={hook.text()} at step "
                    f"{self.state.step + 1} with micro-batch {micro})"
                )
            pieces = deal_samples(batch, count)
            total += self.strategy.pipeline_step(
                [self.collate_batch([self.train_examples[i] for i in p]) if p else None for p in pieces],
                pad_token_id=self.pad_token_id,
                scale=scale,
                autocast=self.autocast,
                scale_loss=scaler.scale if scaler is not None else None,
            )
        return total

    def evaluate(self, examples: Sequence[Example]) -> EvalLoss:
        """Eval loss on ``examples`` (every rank must call it)."""
        batch = self.settings.eval_batch_size or self.settings.micro_batch_size
        assert self._loss_module is not None
        with self.strategy.evaluating(self._loss_module) as dist:
            return compute_eval_loss(
                self.model,
                examples,
                batch_size=batch,
                pad_token_id=self.pad_token_id,
                dist=dist or self.dist,
                autocast=self.autocast,
                packing=self.settings.packing,
                row_tokens=self._row_tokens,
                single_row=self._single_row,
                loss_sums=self.strategy.eval_loss_sums(self.autocast, self.pad_token_id),
            )

    # -- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Writes ``checkpoints/step-NNNNNN`` atomically (rank 0), with every rank's RNG state.

        Returns:
            The checkpoint directory (every rank gets the path; only rank 0 writes).
        """
        assert self._optimizer is not None
        rng_states = self.dist.all_gather_object(rng_state(self.dist.device))
        # Gathered whole and keyed by name (collectives: every rank), whatever the strategy.
        adapter = self.strategy.adapter_state(self.model)
        optimizer_state = self.strategy.optimizer_state(self.model, self._optimizer)
        target = self.output_dir / CHECKPOINTS_DIR
        path = target / f"step-{self.state.step:06d}"
        if self.dist.is_main:
            state_json = json.dumps(asdict(self.state), indent=1)

            def write(directory: Path) -> None:
                self.model.save_pretrained(str(directory / ADAPTER_DIR), state_dict=adapter)
                torch.save(optimizer_state, directory / "optimizer.pt")
                torch.save(self._scheduler.state_dict(), directory / "scheduler.pt")
                if self._scaler is not None:
                    torch.save(self._scaler.state_dict(), directory / "scaler.pt")
                for rank, states in enumerate(rng_states):
                    torch.save(_to_cpu(states), directory / f"rng_state_{rank}.pt")
                (directory / TRAINER_STATE_FILE).write_text(state_json, encoding="utf-8")

            path = write_checkpoint(
                self.output_dir,
                self.state.step,
                write,
                self.hashes,
                extra={
                    "epoch": self.state.epoch,
                    "world_size": self.dist.world_size,
                    "strategy": self.strategy.name,
                    "mesh": self.strategy.mesh(),
                },
                crash_at_step=self.crash_in_checkpoint,
            )
            self.emit("checkpoint", {"step": self.state.step, "path": str(path)})
        self.dist.barrier()
        return path

    def cleanup(self) -> None:
        """Releases optimiser state and cached GPU memory (the trained model stays usable)."""
        self._optimizer = None
        self._scheduler = None
        self._scaler = None
        self._loss_module = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def release(self) -> None:
        """Releases everything, the model included (before building a trainer anew)."""
        self.model = None
        self.base_model = None
        self.cleanup()


def _target_modules(targets: tuple[str, ...]) -> list[str] | str:
    if any(t in ("all-linear", "all_linear", "all") for t in targets):
        return "all-linear"
    return list(targets)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value
