"""Parallel strategies: which train, and how many data-parallel groups each makes (no torch here)."""

from __future__ import annotations

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

# parallel.strategy values that train (the manual's five, FSDP2 added); ``auto`` resolves to one of them.
TRAINABLE_STRATEGIES = (
    "data_parallel",
    "sharded_data_parallel",
    "model_parallel",
    "pipeline_parallel",
    "hybrid_parallel",
)
SUPPORTED_STRATEGIES = (*TRAINABLE_STRATEGIES, "auto")
# What ``auto`` chooses among (the trainable ones): DDP when it fits, else FSDP2, else hybrid. Tensor and
# pipeline parallelism are opt-in: they give up data parallelism, and tensor parallelism needs a degree
# that divides the model's KV heads (the planner offers hybrid only when its degree does).
AUTO_STRATEGIES = ("data_parallel", "sharded_data_parallel", "hybrid_parallel")


def refuse_unsupported(strategy: str) -> None:
    """Raises CONFIG_INVALID for a strategy this version does not know (e.g. a spec or checkpoint written
    by a newer cryptotune), saying what to set instead.

    Raises:
        CryptotuneError: CONFIG_INVALID.
    """
    if strategy in SUPPORTED_STRATEGIES:
        return
    raise CryptotuneError(ErrorCode.CONFIG_INVALID, unsupported_message(strategy))


def unsupported_message(strategy: str) -> str:
    """Why ``strategy`` is refused and what to set instead."""
    return (
        f"parallel.strategy '{strategy}' is not supported by this cryptotune: it trains LoRA adapters with "
        "data_parallel (DDP), sharded_data_parallel (FSDP2), model_parallel (tensor parallel), "
        "pipeline_parallel or hybrid_parallel; set parallel.strategy to one of them or to auto"
    )


def data_parallel_size(strategy: str, world_size: int, tensor_parallel_size: int = 1) -> int:
    """Rank groups that see different samples: the effective batch's multiplier.

    World size for DDP and FSDP2, 1 for pure tensor or pipeline parallelism, world size ÷ tensor
    parallel size for hybrid.
    """
    if strategy in ("model_parallel", "pipeline_parallel"):
        return 1
    if strategy == "hybrid_parallel":
        return max(world_size // max(tensor_parallel_size, 1), 1)
    return max(world_size, 1)


TENSOR_PARALLEL_STRATEGIES = ("model_parallel", "hybrid_parallel")


def strategy_key_issues(
    strategy: str,
    world_size: int,
    tensor_parallel_size: int,
    pipeline_micro_batches: int,
    changed: set[str],
) -> list[tuple[str, str, bool]]:
    """What is wrong with the strategy-specific ``parallel`` keys: ``(key, message, is_error)``.

    Args:
        strategy, world_size, tensor_parallel_size, pipeline_micro_batches: the parsed values.
        changed: the ``parallel`` keys set to other than their defaults (a template that lists every
            key with its default is no mistake).
    """
    issues: list[tuple[str, str, bool]] = []
    if "tensor_parallel_size" in changed and strategy not in (*TENSOR_PARALLEL_STRATEGIES, "auto"):
        issues.append(
            (
                "tensor_parallel_size",
                f"is only used by model_parallel and hybrid_parallel, not {strategy}; remove it, or set "
                "parallel.strategy: hybrid_parallel",
                False,
            )
        )
    for key in ("pipeline_schedule", "pipeline_micro_batches"):
        if key in changed and strategy not in ("pipeline_parallel", "auto"):
            issues.append(
                (
                    key,
                    f"is only used by pipeline_parallel, not {strategy}; remove it, or set "
                    "parallel.strategy: pipeline_parallel",
                    False,
                )
            )
    if (
        strategy == "hybrid_parallel"
        and world_size > 1
        and (
            tensor_parallel_size < 2
            or world_size % tensor_parallel_size
            or world_size == tensor_parallel_size
        )
    ):
        fitting = [d for d in range(2, world_size) if world_size % d == 0]
        instead = f"use {_either(fitting)}" if fitting else "use at least 4 processes (world_size: 4)"
        issues.append(
            (
                "tensor_parallel_size",
                f"hybrid_parallel needs tensor parallel groups of tensor_parallel_size processes, more "
                f"than one and fewer than world_size ({world_size}) which they divide; got "
                f"{tensor_parallel_size}: {instead}",
                True,
            )
        )
    if (
        strategy == "model_parallel"
        and "tensor_parallel_size" in changed
        and tensor_parallel_size != world_size
    ):
        issues.append(
            (
                "tensor_parallel_size",
                f"model_parallel splits every layer over all {world_size} processes; set "
                f"tensor_parallel_size: {world_size} or remove it (for groups smaller than the job use "
                "hybrid_parallel)",
                True,
            )
        )
    # pipeline_parallel's own rules (schedule × micro-batches): config/pipeline.py.
    return issues


def tensor_parallel_degree_problem(degree: int, kv_heads: int, model_name: str) -> str | None:
    """Why ``degree`` cannot split the model's attention (it must divide the KV heads), else None."""
    if degree <= 1 or kv_heads % degree == 0:
        return None
    fitting = [d for d in range(2, kv_heads + 1) if kv_heads % d == 0]
    return (
        f"tensor parallel degree {degree} does not divide the {kv_heads} KV heads of {model_name}; "
        f"use {_either(fitting)}"
    )


def _either(values: list[int]) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" or {words[-1]}"
