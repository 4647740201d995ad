"""Parallel strategies: which train, and how many data-parallel groups each makes (no torch here)."""

from __future__ import annotations

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

# parallel.strategy values that train today; ``auto`` resolves to one of them.
TRAINABLE_STRATEGIES = ("data_parallel", "sharded_data_parallel")
SUPPORTED_STRATEGIES = (*TRAINABLE_STRATEGIES, "auto")
# Accepted by the config schema, refused at submission until they train equivalently.
NOT_YET_TRAINABLE = ("model_parallel", "pipeline_parallel", "hybrid_parallel")


def refuse_unsupported(strategy: str) -> None:
    """Raises CONFIG_INVALID for a strategy that cannot train yet, saying what to set instead.

    Raises:
        CryptotuneError: CONFIG_INVALID.
    """
    if strategy in SUPPORTED_STRATEGIES:
        return
    raise CryptotuneError(ErrorCode.CONFIG_INVALID, unsupported_message(strategy))


def unsupported_message(strategy: str) -> str:
    """Why ``strategy`` is refused and what to set instead."""
    return (
        f"parallel.strategy '{strategy}' is not supported yet: cryptotune trains LoRA adapters with "
        "data_parallel (DDP) or sharded_data_parallel (FSDP2); set parallel.strategy to one of them or auto"
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
