"""A first-order recommendation of training settings from the GPUs' memory."""

from __future__ import annotations

from dataclasses import dataclass

from cryptotune_daemon.constants import BUILTIN_TINY_QWEN3, DEFAULT_MODEL_ID
from cryptotune_daemon.gpus.inventory import GpuInfo

DEFAULT_MODEL = DEFAULT_MODEL_ID
# Qwen3-4B: 4.02 B parameters, bf16 weights ≈ 7.7 GiB. Activation figures are per sample at
# 2048 tokens, measured-order-of-magnitude values: about 6 GiB without gradient checkpointing,
# about 0.9 GiB with it (layer inputs only, plus chunked LM-head logits).
_WEIGHTS_MB = 7_700
_OVERHEAD_MB = 1_500
_ACT_MB_NO_CKPT = 6_000
_ACT_MB_CKPT = 900
_MAX_MICRO_BATCH = 8
_TARGET_EFFECTIVE_BATCH = 16


@dataclass(frozen=True)
class Recommendation:
    """Suggested settings; ``reason`` explains them in one sentence."""

    model: str
    strategy: str
    world_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    precision: str
    gradient_checkpointing: bool
    reason: str


def recommend(gpus: list[GpuInfo], model: str = DEFAULT_MODEL) -> Recommendation:
    """Recommends strategy, micro-batch, precision and checkpointing for ``model``.

    Sized for the smallest free memory among the GPUs, since data parallelism runs the
    same micro-batch on each.
    """
    if not gpus:
        return Recommendation(
            model=model,
            strategy="data_parallel",
            world_size=1,
            per_device_batch_size=1,
            gradient_accumulation_steps=_TARGET_EFFECTIVE_BATCH,
            precision="fp32",
            gradient_checkpointing=False,
            reason=f"No GPU: training runs on the CPU, which is practical only for {BUILTIN_TINY_QWEN3}.",
        )
    free_mb = min(g.memory_total_mb - g.memory_used_mb for g in gpus)
    budget = free_mb - _WEIGHTS_MB - _OVERHEAD_MB
    precision = "bf16" if all(g.compute_capability >= (8, 0) for g in gpus) else "fp16"
    world = len(gpus)
    if budget >= 2 * _ACT_MB_NO_CKPT:
        batch = min(_MAX_MICRO_BATCH, budget // _ACT_MB_NO_CKPT)
        checkpointing = False
        why = f"{free_mb} MiB free per GPU fits micro-batch {batch} without gradient checkpointing"
    elif budget >= _ACT_MB_CKPT:
        batch = min(_MAX_MICRO_BATCH, budget // _ACT_MB_CKPT)
        checkpointing = True
        why = f"{free_mb} MiB free per GPU needs gradient checkpointing for micro-batch {batch}"
    else:
        batch = 1
        checkpointing = True
        why = (
            f"only {free_mb} MiB free per GPU: even micro-batch 1 with gradient checkpointing may not fit "
            "a 4B model at 2048 tokens; lower training.max_seq_length or use a smaller model"
        )
    accumulation = max(1, _TARGET_EFFECTIVE_BATCH // (batch * world))
    return Recommendation(
        model=model,
        strategy="data_parallel",
        world_size=world,
        per_device_batch_size=int(batch),
        gradient_accumulation_steps=accumulation,
        precision=precision,
        gradient_checkpointing=checkpointing,
        reason=f"{why}; {precision} on compute capability "
        f"{min(g.compute_capability for g in gpus)[0]}.x; {world} GPU(s) in data parallel.",
    )
