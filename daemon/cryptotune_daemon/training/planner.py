"""Resolves ``auto`` training settings from device memory and model size, and plans the steps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptotune_daemon.config.strategies import data_parallel_size
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.batching import packed_shape, steps_per_epoch
from cryptotune_daemon.training.loss import DEFAULT_CHUNK_TOKENS
from cryptotune_daemon.training.models import ModelFacts
from cryptotune_daemon.training.strategy_planner import StrategyInputs, choose_strategy, strategy_table

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
    max_seq_length: int = 0
    packing: bool = True
    varlen_attention: bool = False
    strategy: str = "data_parallel"
    tensor_parallel_size: int = 2
    pipeline_micro_batches: int = 2
    pipeline_schedule: str = "1f1b"


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one rank, in MB, by part (see :func:`estimate_memory`)."""

    weights: int
    lora_and_optimizer: int
    activations: int
    attention_mask: int
    logits: int
    overhead: int
    total: int

    def describe(self) -> str:
        """One line for the plan: each part and the total."""
        return (
            f"weights {self.weights:,} + LoRA/grads/AdamW {self.lora_and_optimizer:,} + activations "
            f"{self.activations:,} + attention mask {self.attention_mask:,} + logits {self.logits:,} "
            f"+ overhead {self.overhead:,} = {self.total:,} MB"
        )


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
    memory_budget_mb: int = 0
    memory_breakdown: str = ""
    packing: bool = True
    packed_rows: int = 0
    longest_row_tokens: int = 0
    choice: str = ""
    strategy: str = "data_parallel"
    strategies: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (persisted in ``pipeline_state.json`` for resumes)."""
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["strategies"] = [dict(row) for row in self.strategies]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_json`."""
        strategies = tuple(dict(row) for row in data.get("strategies", ()))
        return cls(**{**data, "notes": tuple(data.get("notes", ())), "strategies": strategies})


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


def micro_batch_shape(
    lengths_longest_first: list[int], micro_batch_size: int, *, packing: bool, max_seq_length: int
) -> tuple[int, int]:
    """``(rows, width)`` of the largest micro-batch: its ``micro_batch_size`` longest samples.

    Packed, they fill rows of at most ``max_seq_length`` tokens (at least the longest sample) as
    training packs them; padded, every sample is a row as wide as the longest.
    """
    chosen = lengths_longest_first[:micro_batch_size]
    if not packing:
        return len(chosen), chosen[0]
    return packed_shape(chosen, max(max_seq_length, chosen[0]))


def estimate_memory(
    facts: ModelFacts,
    *,
    device: str,
    rows: int,
    width: int,
    precision: str,
    gradient_checkpointing: bool,
    lora_parameters: int,
    label_tokens: int | None = None,
    varlen_attention: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> MemoryEstimate:
    """Peak memory of one rank for a micro-batch of ``rows × width`` tokens, by a deliberately simple model:

    * base weights: ``P × b`` with ``b`` = 2 for bf16/fp16, 4 for fp32 (the frozen base is stored in
      the training precision; LoRA adapters stay fp32);
    * LoRA: ``L × 16`` (fp32 weight, gradient, and AdamW's two moments);
    * activations, ``tokens = rows × width`` (padding included), with one layer's full activations
      ``A = tokens × b × (12·hidden + 4·intermediate)`` (attention and MLP inputs/outputs kept for
      backward): without checkpointing ``A × layers`` plus ``A`` for the gradients of the layer being
      back-propagated; with checkpointing ``tokens × layers × b × hidden`` (one saved input per layer)
      plus ``2 × A`` (one layer recomputed during backward, and its gradients);
    * attention mask: SDPA gets a boolean ``rows × width × width`` mask (block-diagonal when packed,
      padding when padded); FlashAttention's varlen kernel needs none;
    * loss: logits exist only for one chunk of labelled tokens at a time, in fp32 with one temporary
      of the same size (plus a half-precision copy for the gradient product in bf16/fp16);
    * 10 % allocator slack plus a fixed overhead (CUDA context, kernels: 600 MB; CPU: 400 MB).

    The budget it is compared with is 90 % of a GPU's memory, or 80 % of the available RAM shared
    by the ranks on a CPU (:func:`detect_device`).
    """
    b = 4 if precision == "fp32" else 2
    tokens = rows * width
    labelled = tokens if label_tokens is None else label_tokens
    full_layer = tokens * b * (12 * facts.hidden_size + 4 * facts.intermediate_size)
    if gradient_checkpointing:
        activations = tokens * facts.num_layers * b * facts.hidden_size + 2 * full_layer
    else:
        activations = full_layer * (facts.num_layers + 1)
    mask = 0 if varlen_attention else rows * width * width
    logits = min(labelled, chunk_tokens) * facts.vocab_size * (8 + (2 if b == 2 else 0))

    def mb(value: float) -> int:
        return math.ceil(value * 1.1 / MB)

    parts = {
        "weights": mb(facts.num_parameters * b),
        "lora_and_optimizer": mb(lora_parameters * 16),
        "activations": mb(activations),
        "attention_mask": mb(mask),
        "logits": mb(logits),
        "overhead": _OVERHEAD_MB.get(device, 400),
    }
    return MemoryEstimate(**parts, total=sum(parts.values()))


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
    ``DEFAULT_EFFECTIVE_BATCH`` (16). Memory is estimated for the heaviest micro-batch: the
    ``micro`` longest samples, packed into rows of at most ``max_seq_length`` tokens (or padded).
    Micro-batch (auto): the largest power of two (≤ 64, ≤ the target per rank and accumulation
    step, ≤ samples per rank) whose estimate fits the budget. Accumulation (auto):
    ``ceil(target / (micro × world))``, keeping the effective batch. Gradient checkpointing (auto):
    on when ``lora.optimization_strategy`` is ``memory``; otherwise off when a micro-batch of at
    least 4 (or all a rank's samples) fits without it, else on. Precision: bf16 where supported,
    else fp16, fp32 on CPUs (:func:`resolve_precision`).

    Raises:
        CryptotuneError: CONFIG_INVALID when there is nothing to train on.
    """
    if not train_lengths:
        raise CryptotuneError(ErrorCode.DATA_INVALID, "there are no training samples to plan for")
    world = max(request.world_size, 1)
    precision, notes = resolve_precision(device, request.fp16, request.bf16)
    longest_first = sorted(train_lengths, reverse=True)
    lora = lora_parameter_count(facts, request.lora_rank, request.lora_target_modules)
    per_rank_samples = math.ceil(len(train_lengths) / world)

    def shape(micro: int) -> tuple[int, int]:
        return micro_batch_shape(
            longest_first, micro, packing=request.packing, max_seq_length=request.max_seq_length
        )

    def breakdown(micro: int, checkpointing: bool) -> MemoryEstimate:
        rows, width = shape(micro)
        return estimate_memory(
            facts,
            device=device.kind,
            rows=rows,
            width=width,
            precision=precision,
            gradient_checkpointing=checkpointing,
            lora_parameters=lora,
            label_tokens=sum(longest_first[:micro]),
            varlen_attention=request.varlen_attention,
        )

    def estimate(micro: int, checkpointing: bool) -> int:
        return breakdown(micro, checkpointing).total

    target = request.effective_batch_size
    if request.micro_batch_size is not None and request.gradient_accumulation_steps is not None:
        target = request.micro_batch_size * request.gradient_accumulation_steps * world
    # With a fixed accumulation the micro-batch is what brings the effective batch to the target.
    per_micro = world * (request.gradient_accumulation_steps or 1)
    cap = max(1, min(MAX_AUTO_MICRO_BATCH, math.ceil(target / per_micro), per_rank_samples))
    candidates = [2**k for k in range(int(math.log2(cap)) + 1)]
    budget = device.memory_budget_mb

    def largest_fitting(checkpointing: bool) -> int | None:
        fitting = [m for m in candidates if estimate(m, checkpointing) <= budget]
        return fitting[-1] if fitting else None

    checkpointing = request.gradient_checkpointing
    micro = request.micro_batch_size
    why_checkpointing = "as configured"
    if checkpointing is None and request.prefer_memory:
        checkpointing, why_checkpointing = True, "lora.optimization_strategy is memory"
    if checkpointing is None:
        if micro is not None:
            checkpointing = estimate(micro, False) > budget
            why_checkpointing = (
                f"micro-batch {micro} does not fit without it"
                if checkpointing
                else f"micro-batch {micro} fits without it"
            )
        else:
            best = largest_fitting(False)
            checkpointing = best is None or best < min(MIN_MICRO_BATCH_WITHOUT_CHECKPOINTING, cap)
            if best is None:
                why_checkpointing = "not even micro-batch 1 fits without it"
            elif checkpointing:
                why_checkpointing = f"without it only micro-batch {best} fits"
            else:
                why_checkpointing = f"micro-batch {best} fits without it"
    why_micro = "as configured"
    if micro is None:
        fitting = largest_fitting(checkpointing)
        micro = fitting or 1
        why_micro = (
            f"the largest power of two up to {cap} that fits"
            if fitting
            else "nothing fits: the smallest possible"
        )
    memory = breakdown(micro, checkpointing)
    rows, width = shape(micro)
    if memory.total > budget:
        notes.append(
            f"estimated memory {memory.total} MB exceeds the budget of {budget} MB "
            f"on {device.name}; "
            "training may run out of memory: lower per_device_train_batch_size or max_seq_length"
            + ("" if checkpointing else ", or enable gradient_checkpointing")
        )
    table = strategy_table(
        facts,
        StrategyInputs(
            device=device.kind,
            gpus=world,
            memory_budget_mb=budget,
            rows=rows,
            width=width,
            label_tokens=sum(longest_first[:micro]),
            precision=precision,
            gradient_checkpointing=checkpointing,
            lora_parameters=lora,
            tensor_parallel_size=request.tensor_parallel_size,
            varlen_attention=request.varlen_attention,
            pipeline_micro_batches=request.pipeline_micro_batches,
            pipeline_schedule=request.pipeline_schedule,
            samples=micro,
        ),
    )
    if request.strategy == "auto":
        strategy, why_strategy = choose_strategy(table)
    else:
        strategy, why_strategy = request.strategy, f"{request.strategy}: as configured"
    # Ranks of a tensor-parallel group train the same samples: the effective batch counts the groups.
    groups = data_parallel_size(strategy, world, request.tensor_parallel_size)
    accumulation = request.gradient_accumulation_steps or max(1, math.ceil(target / (micro * groups)))
    ranks = (
        f"{world} process(es)" if groups == world else f"{groups} data-parallel group(s) of {world} processes"
    )
    choice = (
        f"micro-batch {micro} ({why_micro}) × accumulation {accumulation} × {ranks} = "
        f"effective batch {micro * accumulation * groups}; gradient checkpointing "
        f"{'on' if checkpointing else 'off'} ({why_checkpointing}); {precision} "
        f"({'the GPU' if device.kind == 'cuda' else 'CPUs train in fp32'}); "
        f"estimated {memory.total:,} of {budget:,} MB on {device.name}"
    )
    choice += f"; strategy {why_strategy}"
    per_epoch = steps_per_epoch(len(train_lengths), micro, accumulation, groups)
    if request.max_steps and request.max_steps > 0:
        total = request.max_steps
    else:
        total = max(1, math.ceil(request.num_train_epochs * per_epoch))
    return Plan(
        micro_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        effective_batch_size=micro * accumulation * groups,
        world_size=world,
        precision=precision,
        gradient_checkpointing=bool(checkpointing),
        total_steps=total,
        steps_per_epoch=per_epoch,
        epochs=round(total / per_epoch, 4),
        warmup_steps=math.ceil(request.warmup_ratio * total),
        memory_estimate_mb=memory.total,
        device=device.kind,
        notes=tuple(notes),
        memory_budget_mb=budget,
        memory_breakdown=memory.describe(),
        packing=request.packing,
        packed_rows=rows,
        longest_row_tokens=width,
        choice=choice,
        strategy=strategy,
        strategies=tuple(row.to_json() for row in table),
    )
