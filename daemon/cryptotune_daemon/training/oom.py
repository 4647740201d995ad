"""Out-of-memory recovery: halve the micro-batch, keep the effective batch, continue from a checkpoint."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cryptotune_daemon.training.oom_relaunch import OomRelaunchRequest
from cryptotune_daemon.training.trainer import TrainingOutOfMemory

if TYPE_CHECKING:
    from cryptotune_daemon.training.checkpoints import CheckpointInfo
    from cryptotune_daemon.training.trainer import LoraTrainer, TrainerSettings


@dataclass(frozen=True)
class OomRecovery:
    """One recovery, as reported in the ``oom_recovery`` event.

    Attributes:
        step: the optimiser step that ran out of memory.
        old_micro_batch, new_micro_batch: micro-batch before and after.
        old_accumulation, new_accumulation: gradient accumulation before and after.
        resumed_from_step: the checkpoint training continues from (0: from the start).
    """

    step: int
    old_micro_batch: int
    new_micro_batch: int
    old_accumulation: int
    new_accumulation: int
    resumed_from_step: int

    def to_json(self) -> dict[str, int]:
        """The event payload."""
        return dataclasses.asdict(self)


def halved_settings(settings: TrainerSettings) -> TrainerSettings | None:
    """The settings with the micro-batch halved and accumulation raised to keep the effective batch.

    The new micro-batch is the largest divisor of the samples per step not above half the old one
    (exactly half for the usual powers of two), so micro-batch × accumulation stays the same and with
    it the effective batch, the steps per epoch and the learning-rate schedule.

    Returns:
        None when the micro-batch is 1 already.
    """
    old = settings.micro_batch_size
    if old <= 1:
        return None
    per_step = settings.samples_per_step
    micro = max(d for d in range(1, old // 2 + 1) if per_step % d == 0)
    return dataclasses.replace(
        settings, micro_batch_size=micro, gradient_accumulation_steps=per_step // micro
    )


def relaunch_request(error: TrainingOutOfMemory, settings: TrainerSettings, rank: int) -> OomRelaunchRequest:
    """What a process of a multi-process job asks the daemon for after running out of memory."""
    smaller = halved_settings(settings)
    return OomRelaunchRequest(
        step=error.step,
        rank=rank,
        old_micro_batch=settings.micro_batch_size,
        old_accumulation=settings.gradient_accumulation_steps,
        new_micro_batch=None if smaller is None else smaller.micro_batch_size,
        new_accumulation=None if smaller is None else smaller.gradient_accumulation_steps,
        message=f"{error.message} (in process {rank})",
    )


def train_with_oom_recovery(
    build: Callable[[TrainerSettings], LoraTrainer],
    settings: TrainerSettings,
    *,
    resume: CheckpointInfo | None,
    latest_checkpoint: Callable[[], CheckpointInfo | None],
    on_recovery: Callable[[OomRecovery, TrainerSettings], None],
    recover: bool = True,
) -> LoraTrainer:
    """Builds, sets up and trains a trainer; on out-of-memory halves the micro-batch and goes on.

    Recovery keeps the data order equivalent: the order is fixed per optimiser step
    (:func:`~cryptotune_daemon.training.batching.epoch_steps`), so after halving the micro-batch and
    doubling accumulation every step still trains on the same samples with the same effective
    batch and learning rate. Training continues from the newest verified checkpoint (whose state
    and RNG streams are exact; the partial step that ran out of memory is discarded), or from the
    start when there is none. A fresh trainer and base model are built for that, since the failed
    one's memory may be fragmented and peft has modified its model in place.

    Args:
        build: makes a trainer (with a freshly loaded base model) for the given settings.
        settings: the planned settings.
        resume: the checkpoint the first attempt resumes from, if any.
        latest_checkpoint: the newest verified checkpoint after a failed attempt.
        on_recovery: told about each recovery before training continues (events, persisted plan).
        recover: False (several processes: one rank cannot change its batch alone) re-raises at once.

    Returns:
        The trainer that finished training (call ``cleanup`` on it).

    Raises:
        TrainingOutOfMemory: when the micro-batch is 1 already (or ``recover`` is False).
    """
    while True:
        trainer = build(settings)
        trainer.setup(resume)
        try:
            trainer.train()
            return trainer
        except TrainingOutOfMemory as error:
            failed_step = error.step
            smaller = halved_settings(settings) if recover else None
            if smaller is None:
                raise
        # Out of the except block, so no traceback keeps the failed step's tensors alive.
        trainer.release()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        resume = latest_checkpoint()
        recovery = OomRecovery(
            step=failed_step,
            old_micro_batch=settings.micro_batch_size,
            new_micro_batch=smaller.micro_batch_size,
            old_accumulation=settings.gradient_accumulation_steps,
            new_accumulation=smaller.gradient_accumulation_steps,
            resumed_from_step=0 if resume is None else resume.step,
        )
        on_recovery(recovery, smaller)
        settings = smaller
