"""The config → planner request and trainer settings mapping (``auto`` resolved by the plan)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptotune_daemon.config import CryptotuneConfig
    from cryptotune_daemon.training.planner import Plan, PlanRequest
    from cryptotune_daemon.training.trainer import TrainerSettings


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
        pipeline_micro_batches=int(config.parallel.pipeline_micro_batches),
        pipeline_schedule=str(config.parallel.pipeline_schedule),
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
        tensor_parallel_size=int(config.parallel.tensor_parallel_size),
        pipeline_schedule=str(config.parallel.pipeline_schedule),
        pipeline_micro_batches=int(config.parallel.pipeline_micro_batches),
        nodes=int(config.parallel.nodes),
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
