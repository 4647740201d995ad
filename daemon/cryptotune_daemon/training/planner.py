"""Resolves ``auto`` training settings from device memory and model size, and plans the steps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.dataset import steps_per_epoch
from cryptotune_daemon.training.loss import DEFAULT_CHUNK_TOKENS
from cryptotune_daemon.training.models import ModelFacts

MB = 1024 * 1024
DEFAULT_EFFECTIVE_BATCH = 16
MAX_AUTO_MICRO_BATCH = 64
# Without checkpointing we want at least this micro-batch; smaller means recomputation pays off.
MIN_MICRO_BATCH_WITHOUT_CHECKPOINTING = 4
_OVERHEAD_MB = {"cuda": 600, "cpu": 400}
_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DeviceInfo:
    """What one rank trains on.

    Attributes:
        kind: ``cpu`` or ``cuda``.
        name: the device's name.
        memory_total_mb: total memory of one device (RAM for CPU).
        memory_budget_mb: what one rank's training may use.
        bf16_supported: whether bf16 compute is supported (CUDA only).
    """

    kind: str
    name: str
    memory_total_mb: int
    memory_budget_mb: int
    bf16_supported: bool = False


def detect_device(kind: str, world_size: int = 1) -> DeviceInfo:
    """Reads the device's memory (``torch.cuda`` for GPUs, ``psutil`` for the CPU).

    Raises:
        CryptotuneError: RESOURCE_EXHAUSTED when CUDA was requested but no GPU is visible.
    """
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise CryptotuneError(
                ErrorCode.RESOURCE_EXHAUSTED,
                "the job was scheduled on a GPU but CUDA is not available to the worker "
                "(check the NVIDIA driver and that the daemon's torch is a CUDA build)",
            )
        props = torch.cuda.get_device_properties(0)
        total = int(props.total_memory // MB)
        return DeviceInfo(
            kind="cuda",
            name=str(props.name),
            memory_total_mb=total,
            memory_budget_mb=int(total * 0.9),
            bf16_supported=bool(torch.cuda.is_bf16_supported()),
        )
    import psutil

    memory = psutil.virtual_memory()
    return DeviceInfo(
        kind="cpu",
        name="cpu",
        memory_total_mb=int(memory.total // MB),
        memory_budget_mb=int(memory.available * 0.8 / max(world_size, 1) // MB),
    )


@dataclass(frozen=True)
class PlanRequest:
    """The user's settings as configured; None means ``auto``."""

    micro_batch_size: int | None
    gradient_accumulation_steps: int | None
    gradient_checkpointing: bool | None
    fp16: bool | None
    bf16: bool | None
    num_train_epochs: float
    max_steps: int
    warmup_ratio: float
    lora_rank: int
    lora_target_modules: tuple[str, ...]
    world_size: int = 1
    effective_batch_size: int = DEFAULT_EFFECTIVE_BATCH
    prefer_memory: bool = False


@dataclass(frozen=True)
class Plan:
    """Resolved settings and the step plan (the ``plan`` event's core)."""

    micro_batch_size: int
    gradient_accumulation_steps: int
    effective_batch_size: int
    world_size: int
    precision: str
    gradient_checkpointing: bool
    total_steps: int
    steps_per_epoch: int
    epochs: float
    warmup_steps: int
    memory_estimate_mb: int
    device: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (persisted in ``pipeline_state.json`` for resumes)."""
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_json`."""
        return cls(**{**data, "notes": tuple(data.get("notes", ()))})


def lora_parameter_count(facts: ModelFacts, rank: int, targets: tuple[str, ...]) -> int:
    """Trainable LoRA parameters: ``rank × (in + out)`` per targeted projection per layer."""
    h, i = facts.hidden_size, facts.intermediate_size
    q_out = facts.num_attention_heads * facts.head_dim
    kv_out = facts.num_key_value_heads * facts.head_dim
    shapes = {
        "q_proj": (h, q_out),
        "k_proj": (h, kv_out),
        "v_proj": (h, kv_out),
        "o_proj": (q_out, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    names = _ALL_LINEAR if any(t in ("all-linear", "all_linear", "all") for t in targets) else targets
    per_layer = sum(rank * sum(shapes.get(name, (h, h))) for name in names)
    return per_layer * facts.num_layers


def estimate_memory_mb(
    facts: ModelFacts,
    *,
    device: str,
    micro_batch_size: int,
    seq_len: int,
    precision: str,
    gradient_checkpointing: bool,
    lora_parameters: int,
) -> int:
    """Peak memory of one rank in MB, by a deliberately simple estimate (bytes per micro-step):

    * base weights: ``P × b`` with ``b`` = 2 for bf16/fp16, 4 for fp32 (the frozen base is stored in
      the training precision; LoRA adapters stay fp32);
    * LoRA: ``L × 16`` (fp32 weight, gradient, and AdamW's two moments);
    * activations, ``tokens = micro_batch × longest_sample``: without checkpointing
      ``tokens × layers × b × (12·hidden + 4·intermediate)`` (attention and MLP inputs/outputs kept for
      backward); with checkpointing ``tokens × layers × b × hidden`` (one saved input per layer) plus one
      layer's full activations, recomputed during backward;
    * loss: logits exist only for one chunk of labelled tokens at a time:
      ``min(tokens, chunk) × vocab × 4 × 3`` (fp32 logits, softmax and its gradient);
    * 10 % allocator slack plus a fixed overhead (CUDA context, kernels: 600 MB; CPU: 400 MB).

    The budget it is compared with is 90 % of a GPU's memory, or 80 % of the available RAM shared
    by the ranks on a CPU (:func:`detect_device`).
    """
    b = 4 if precision == "fp32" else 2
    tokens = micro_batch_size * seq_len
    weights = facts.num_parameters * b
    lora = lora_parameters * 16
    full_layer = tokens * b * (12 * facts.hidden_size + 4 * facts.intermediate_size)
    if gradient_checkpointing:
        activations = tokens * facts.num_layers * b * facts.hidden_size + full_layer
    else:
        activations = full_layer * facts.num_layers
    logits = min(tokens, DEFAULT_CHUNK_TOKENS) * facts.vocab_size * 4 * 3
    total = (weights + lora + activations + logits) * 1.1
    return math.ceil(total / MB) + _OVERHEAD_MB.get(device, 400)


def resolve_precision(device: DeviceInfo, fp16: bool | None, bf16: bool | None) -> tuple[str, list[str]]:
    """Training precision: fp32 on CPU; on CUDA the configured one, bf16 falling back to fp16.

    ``bf16`` (the default) wins when both flags are set; None for either means "auto" (bf16 when
    the GPU supports it, else fp16).

    Returns:
        The precision (``fp32``, ``bf16`` or ``fp16``) and warnings about overridden settings.
    """
    notes: list[str] = []
    if device.kind != "cuda":
        # CPUs train in fp32 whatever the flags say (bf16 is the default, so no warning).
        return "fp32", notes
    if bf16 or (bf16 is None and fp16 is not True):
        if device.bf16_supported:
            return "bf16", notes
        if bf16:
            notes.append(f"{device.name} does not support bf16: training in fp16 instead")
        return "fp16", notes
    if fp16:
        return "fp16", notes
    return "fp32", notes


def plan_training(
    request: PlanRequest, facts: ModelFacts, device: DeviceInfo, train_lengths: list[int]
) -> Plan:
    """Resolves every ``auto`` setting and computes the number of optimiser steps.

    The target effective batch is ``micro × accumulation × world`` when both are set, else
    ``DEFAULT_EFFECTIVE_BATCH`` (16). Micro-batch (auto): the largest power of two (≤ 64, ≤ the
    target per rank and accumulation step, ≤ samples per rank) whose estimate fits the budget.
    Accumulation (auto): ``ceil(target / (micro × world))``, keeping the effective batch.
    Gradient checkpointing (auto): on when ``lora.optimization_strategy`` is ``memory``; otherwise
    off when a micro-batch of at least 4 (or all a rank's samples) fits without it, else on.

    Raises:
        CryptotuneError: CONFIG_INVALID when there is nothing to train on.
    """
    if not train_lengths:
        raise CryptotuneError(ErrorCode.DATA_INVALID, "there are no training samples to plan for")
    world = max(request.world_size, 1)
    precision, notes = resolve_precision(device, request.fp16, request.bf16)
    seq_len = max(train_lengths)
    lora = lora_parameter_count(facts, request.lora_rank, request.lora_target_modules)
    per_rank_samples = math.ceil(len(train_lengths) / world)

    def estimate(micro: int, checkpointing: bool) -> int:
        return estimate_memory_mb(
            facts,
            device=device.kind,
            micro_batch_size=micro,
            seq_len=seq_len,
            precision=precision,
            gradient_checkpointing=checkpointing,
            lora_parameters=lora,
        )

    target = request.effective_batch_size
    if request.micro_batch_size is not None and request.gradient_accumulation_steps is not None:
        target = request.micro_batch_size * request.gradient_accumulation_steps * world
    # With a fixed accumulation the micro-batch is what brings the effective batch to the target.
    per_micro = world * (request.gradient_accumulation_steps or 1)
    cap = max(1, min(MAX_AUTO_MICRO_BATCH, math.ceil(target / per_micro), per_rank_samples))
    candidates = [2**k for k in range(int(math.log2(cap)) + 1)]

    def largest_fitting(checkpointing: bool) -> int | None:
        fitting = [m for m in candidates if estimate(m, checkpointing) <= device.memory_budget_mb]
        return fitting[-1] if fitting else None

    checkpointing = request.gradient_checkpointing
    micro = request.micro_batch_size
    if checkpointing is None and request.prefer_memory:
        checkpointing = True
    if checkpointing is None:
        if micro is not None:
            checkpointing = estimate(micro, False) > device.memory_budget_mb
        else:
            best = largest_fitting(False)
            checkpointing = best is None or best < min(MIN_MICRO_BATCH_WITHOUT_CHECKPOINTING, cap)
    if micro is None:
        micro = largest_fitting(checkpointing) or 1
    accumulation = request.gradient_accumulation_steps or max(1, math.ceil(target / (micro * world)))
    memory = estimate(micro, checkpointing)
    if memory > device.memory_budget_mb:
        notes.append(
            f"estimated memory {memory} MB exceeds the budget of {device.memory_budget_mb} MB "
            f"on {device.name}; "
            "training may run out of memory: lower per_device_train_batch_size or max_seq_length"
            + ("" if checkpointing else ", or enable gradient_checkpointing")
        )
    per_epoch = steps_per_epoch(len(train_lengths), micro, accumulation, world)
    if request.max_steps and request.max_steps > 0:
        total = request.max_steps
    else:
        total = max(1, math.ceil(request.num_train_epochs * per_epoch))
    return Plan(
        micro_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        effective_batch_size=micro * accumulation * world,
        world_size=world,
        precision=precision,
        gradient_checkpointing=bool(checkpointing),
        total_steps=total,
        steps_per_epoch=per_epoch,
        epochs=round(total / per_epoch, 4),
        warmup_steps=math.ceil(request.warmup_ratio * total),
        memory_estimate_mb=memory,
        device=device.kind,
        notes=tuple(notes),
    )
