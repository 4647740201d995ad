"""The strategy table: memory per GPU and expected step time of every parallel strategy, and ``auto``'s pick.

A pure function over sizes (no torch, no devices): the planner feeds it the model's facts, the
machine's GPUs and the heaviest micro-batch, and ``train --dry-run`` prints what it returns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cryptotune_daemon.config.strategies import (
    AUTO_STRATEGIES,
    TRAINABLE_STRATEGIES,
    data_parallel_size,
    unsupported_message,
)
from cryptotune_daemon.training.models import ModelFacts

MB = 1024 * 1024
# The order ``auto`` prefers among strategies that fit (the fastest first, see StrategyRow.step_seconds).
STRATEGY_ORDER = (
    "data_parallel",
    "sharded_data_parallel",
    "hybrid_parallel",
    "model_parallel",
    "pipeline_parallel",
)
# Rough machine constants for the expected step time: dense bf16 throughput actually reached by a
# LoRA step, and the bandwidth of collectives between the GPUs of one machine (NVLink/PCIe mix).
_GPU_FLOPS = {"cuda": 150e12, "cpu": 0.2e12}
_LINK_BYTES_PER_SECOND = {"cuda": 100e9, "cpu": 5e9}
_OVERHEAD_MB = {"cuda": 600, "cpu": 400}


@dataclass(frozen=True)
class StrategyInputs:
    """What the table needs about one job on one machine.

    Attributes:
        device: ``cuda`` or ``cpu``.
        gpus: processes of the job (GPUs, or CPU processes).
        memory_budget_mb: usable memory of one GPU (or one CPU process's share).
        rows, width: shape of the heaviest packed micro-batch.
        label_tokens: labelled tokens of that micro-batch.
        precision: ``bf16``, ``fp16`` or ``fp32``.
        gradient_checkpointing: None to consider both (the table then reports the cheaper that fits).
        lora_parameters: trainable parameters.
        tensor_parallel_size: the tensor-parallel degree of model_parallel (all GPUs) and hybrid (groups).
        pipeline_micro_batches, pipeline_schedule: how pipeline_parallel cuts and schedules the batch.
        samples: samples of that micro-batch (0: unknown); a pipeline cuts it into at most that many.
        varlen_attention: FlashAttention (no SDPA mask).
        chunk_tokens: labelled positions per chunk of logits.
    """

    device: str
    gpus: int
    memory_budget_mb: int
    rows: int
    width: int
    label_tokens: int
    precision: str
    gradient_checkpointing: bool | None
    lora_parameters: int
    tensor_parallel_size: int = 2
    varlen_attention: bool = False
    chunk_tokens: int = 512
    pipeline_micro_batches: int = 2
    pipeline_schedule: str = "1f1b"
    samples: int = 0


@dataclass(frozen=True)
class StrategyRow:
    """One strategy's line of the table (the ``strategies`` list of the dry-run plan)."""

    strategy: str
    fits: bool
    memory_per_gpu_mb: int
    reason: str
    step_seconds: float
    available: bool

    def to_json(self) -> dict[str, object]:
        """The pinned fields plus the step time and availability."""
        return asdict(self)


def _layer_weights(facts: ModelFacts) -> int:
    """Parameters of one decoder layer (attention and MLP projections)."""
    h, i = facts.hidden_size, facts.intermediate_size
    q = facts.num_attention_heads * facts.head_dim
    kv = facts.num_key_value_heads * facts.head_dim
    return h * (q + 2 * kv) + q * h + 3 * h * i


def strategy_table(facts: ModelFacts, inputs: StrategyInputs) -> list[StrategyRow]:
    """Peak memory per GPU and expected step time of each strategy for the heaviest micro-batch.

    Memory per GPU, in the spirit of :func:`~cryptotune_daemon.training.planner.estimate_memory`:
    frozen weights (whole, or this GPU's shard/slice/stage), LoRA weights + gradients + AdamW
    moments (16 bytes each, sharded by FSDP2), activations of the longest packed row with or without
    checkpointing (split by tensor parallelism; one stage's layers for pipelines), the SDPA mask,
    one chunk of logits, communication buffers (DDP's gradient buckets; FSDP2's all-gathered layers),
    10 % slack and a fixed overhead. The step time adds compute (6 × parameters × tokens, divided
    among the GPUs working on the same sample) to the bytes each strategy moves between GPUs, plus a
    pipeline's bubble, for one micro-batch; it is then scaled to the same effective batch (GPUs that
    share samples run proportionally more micro-batches), so the rows compare like with like.
    """
    n = max(inputs.gpus, 1)
    b = 4 if inputs.precision == "fp32" else 2
    tp = min(max(inputs.tensor_parallel_size, 1), n)
    tokens = inputs.rows * inputs.width
    layer = _layer_weights(facts)
    embed = facts.vocab_size * facts.hidden_size
    weights = facts.num_parameters * b
    full_layer = tokens * b * (12 * facts.hidden_size + 4 * facts.intermediate_size)
    hidden_states = tokens * facts.num_layers * b * facts.hidden_size
    mask = 0 if inputs.varlen_attention else inputs.rows * inputs.width * inputs.width
    logits = min(inputs.label_tokens, inputs.chunk_tokens) * facts.vocab_size * (8 + (2 if b == 2 else 0))
    lora = inputs.lora_parameters * 16
    budget = inputs.memory_budget_mb
    overhead = _OVERHEAD_MB.get(inputs.device, 400)

    def activations(split: int, layers_share: float, checkpointing: bool) -> float:
        if checkpointing:
            return hidden_states * layers_share + 2 * full_layer / split
        return full_layer / split * (facts.num_layers * layers_share + 1)

    def total_mb(parts: float) -> int:
        return math.ceil(parts * 1.1 / MB) + overhead

    flops = 6 * facts.num_parameters * tokens
    speed = _GPU_FLOPS.get(inputs.device, 0.2e12)
    link = _LINK_BYTES_PER_SECOND.get(inputs.device, 5e9)
    lora_grads = inputs.lora_parameters * 4
    layouts: dict[str, tuple[float, float, int, float, str]] = {
        # name: (static bytes, activation split, layers share, seconds, description)
        "data_parallel": (
            weights + lora + 2 * lora_grads,
            1,
            1,
            flops / speed + 2 * lora_grads / link,
            f"every GPU holds the whole model ({weights / MB / 1024:.1f} GB of weights)",
        ),
        "sharded_data_parallel": (
            weights / n + lora / n + 2 * layer * b + embed * b,
            1,
            1,
            flops / speed + 3 * weights / link,
            f"weights, gradients and optimiser state sharded over {n} GPUs",
        ),
        "model_parallel": (
            (weights - embed * b) / n + embed * b + lora / n,
            n,
            1,
            flops / speed / n + 4 * facts.num_layers * tokens * facts.hidden_size * b / link,
            f"each layer split over {n} GPUs; every GPU sees the same samples",
        ),
        "pipeline_parallel": _pipeline_layout(facts, inputs, weights=weights, embed=embed * b, flops=flops),
        "hybrid_parallel": (
            weights / n + lora / n + 2 * layer * b / tp + embed * b,
            tp,
            1,
            flops / speed / tp
            + 3 * weights / tp / link
            + 4 * facts.num_layers * tokens * facts.hidden_size * b / link,
            f"tensor parallel in groups of {tp} × FSDP2 over {max(n // tp, 1)} group(s)",
        ),
    }
    rows: list[StrategyRow] = []
    for name in STRATEGY_ORDER:
        static, split, share, seconds, description = layouts[name]
        options = (
            [inputs.gradient_checkpointing] if inputs.gradient_checkpointing is not None else [False, True]
        )
        if name == "pipeline_parallel":
            # Micro-batches of 1/M of the batch, `split` of them in flight, over this stage's `share`
            # layers: what each keeps for its backward (layer inputs, or every layer's activations)
            # with its mask and send/receive buffers, plus one micro-batch's working layer.
            micro = 1 / _pipeline_micro_batches(inputs)
            buffers = mask + 2 * tokens * facts.hidden_size * b
            estimates = [
                (
                    total_mb(
                        static
                        + split * micro * ((hidden_states / facts.num_layers if c else full_layer) * share)
                        + split * micro * buffers
                        + micro * (2 * full_layer if c else full_layer)
                        + logits
                    ),
                    c,
                )
                for c in options
            ]
        else:
            estimates = [
                (total_mb(static + activations(int(split), share, c) + mask / split + logits), c)
                for c in options
            ]
        fitting = [(m, c) for m, c in estimates if m <= budget]
        memory, checkpointing = fitting[0] if fitting else min(estimates)
        fits = bool(fitting)
        available = name in TRAINABLE_STRATEGIES and (name == "data_parallel" or n > 1)
        hybrid_mesh = 1 < tp < n and n % tp == 0 and facts.num_key_value_heads % tp == 0
        if name == "pipeline_parallel" and n > facts.num_layers:
            available = False
            description += f" (more stages than the model's {facts.num_layers} layers)"
        how = "with" if checkpointing else "without"
        reason = f"{description}; {memory:,} of {budget:,} MB per GPU {how} gradient checkpointing"
        if not fits:
            reason = f"does not fit: {reason}"
        if name not in TRAINABLE_STRATEGIES:
            reason += f" ({unsupported_message(name).split(':')[0]})"
        elif name == "hybrid_parallel" and not hybrid_mesh:
            available = False
            reason += (
                f" (needs at least 4 GPUs in groups of tensor_parallel_size ({tp}) that divide them and "
                f"the {facts.num_key_value_heads} KV heads)"
            )
        elif not available and n <= 1:
            reason += " (needs more than one GPU)"
        # Per micro-batch above; a strategy whose groups of GPUs share samples runs more micro-batches
        # per GPU for the same effective batch (tensor parallel in pairs: twice as many).
        seconds *= n / data_parallel_size(name, n, tp)
        step = seconds * (1.33 if checkpointing else 1.0)
        rows.append(StrategyRow(name, fits, memory, reason, round(step, 4), available))
    return rows


def _pipeline_micro_batches(inputs: StrategyInputs) -> int:
    """Micro-batches of one pipeline step: the configured count, at most one per sample."""
    wanted = max(inputs.pipeline_micro_batches, 1)
    return min(wanted, inputs.samples) if inputs.samples > 0 else wanted


def _pipeline_layout(
    facts: ModelFacts, inputs: StrategyInputs, *, weights: float, embed: float, flops: float
) -> tuple[float, float, int, float, str]:
    """The pipeline's row: ``(static bytes, micro-batches in flight, layers, seconds, description)``.

    Memory is the busiest stage's: its ``ceil(layers / stages)`` layers of frozen weights plus the
    embedding (stage 0) or the LM head (the last stage; tied to the embedding in Qwen3), its share
    of the LoRA state, and the activations of the micro-batches in flight there: GPipe runs every
    forward before the first backward (all ``M`` micro-batches), 1F1B at most one per stage. The
    step time is the compute of one stage stretched by the bubble: ``(M + stages - 1) / M``, plus
    the hidden states and their gradients sent between stages.
    """
    n = max(inputs.gpus, 1)
    m = _pipeline_micro_batches(inputs)
    b = 4 if inputs.precision == "fp32" else 2
    layers = math.ceil(facts.num_layers / n)
    per_layer = (weights - embed) / max(facts.num_layers, 1)
    # 1F1B with fewer micro-batches than stages runs GPipe (see the strategy); the same count in flight.
    in_flight = m if inputs.pipeline_schedule == "gpipe" else min(n, m)
    tokens = inputs.rows * inputs.width
    speed = _GPU_FLOPS.get(inputs.device, 0.2e12)
    link = _LINK_BYTES_PER_SECOND.get(inputs.device, 5e9)
    bubble = (n - 1) / (m + n - 1)
    seconds = flops / speed / n * (m + n - 1) / m + 2 * tokens * facts.hidden_size * b / link
    description = (
        f"{n} stages of up to {layers} layers, {m} micro-batch{'es' if m != 1 else ''} "
        f"({inputs.pipeline_schedule}: {in_flight} in flight, {bubble:.0%} bubble); every stage sees the "
        "same samples"
    )
    static = layers * per_layer + embed + inputs.lora_parameters * 16 / n
    return static, in_flight, layers, seconds, description


def choose_strategy(rows: list[StrategyRow]) -> tuple[str, str]:
    """``auto``'s pick: the fastest available strategy that fits (DDP when it fits, else FSDP2, ...).

    Only :data:`~cryptotune_daemon.config.strategies.AUTO_STRATEGIES` are candidates; tensor and
    pipeline parallelism train when configured by name.

    Returns:
        The strategy and why. When nothing available fits, the available one that needs the least
        memory per GPU (the plan then warns that training may run out of memory).
    """
    available = [r for r in rows if r.available and r.strategy in AUTO_STRATEGIES]
    fitting = sorted((r for r in available if r.fits), key=lambda r: r.step_seconds)
    if fitting:
        best = fitting[0]
        return (
            best.strategy,
            f"{best.strategy}: the fastest strategy that fits ({best.memory_per_gpu_mb:,} MB per GPU)",
        )
    smallest = min(available, key=lambda r: r.memory_per_gpu_mb)
    return smallest.strategy, f"{smallest.strategy}: no strategy fits; it needs the least memory per GPU"
