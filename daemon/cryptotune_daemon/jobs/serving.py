"""Whether vLLM would load a job's adapter for a Qwen3 model (a pure check of ``adapter_config.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# --max-lora-rank accepts only these values (vLLM's LoRAConfig.max_lora_rank).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The layers vLLM's Qwen3 implementation applies LoRA to (packed as qkv_proj and gate_up_proj).
VLLM_QWEN3_LORA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj"}
)
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class ServingCheck:
    """The verdict on an adapter for ``vllm serve --enable-lora``.

    Attributes:
        loadable: vLLM would load it.
        problems: what would not load, and why (empty when loadable).
        base_model: what ``vllm serve`` loads as the base.
        name: the adapter's name in ``--lora-modules NAME=DIR``.
        rank: the adapter's rank.
        max_lora_rank: the smallest ``--max-lora-rank`` vLLM accepts that fits the rank (0: none does).
    """

    loadable: bool
    base_model: str
    name: str
    rank: int
    max_lora_rank: int
    problems: list[str] = field(default_factory=list)


def _modules(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    return sorted(str(m) for m in raw)


def check_vllm_adapter(adapter_config: Mapping[str, Any], *, base_model: str, name: str) -> ServingCheck:
    """Checks a peft ``adapter_config.json`` against what vLLM accepts for Qwen3.

    Args:
        adapter_config: the adapter's config.
        base_model: the job's ``model.model_name``.
        name: the name to serve the adapter under (the pipeline id).
    """
    problems: list[str] = []
    rank = int(adapter_config.get("r") or 0)
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    max_rank = fitting[0] if fitting else 0
    if not fitting:
        problems.append(
            f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]}): train with "
            f"lora.rank ≤ {VLLM_LORA_RANKS[-1]}"
        )
    saved = _modules(adapter_config.get("modules_to_save"))
    if saved:
        problems.append(
            f"modules_to_save ({', '.join(saved)}): vLLM loads only LoRA matrices, not fully trained "
            "modules; use `cryptotune export JOB DIR --merged` instead"
        )
    if adapter_config.get("use_dora"):
        problems.append("DoRA (use_dora): vLLM does not support DoRA adapters; use --merged instead")
    bias = adapter_config.get("bias") or "none"
    if bias != "none":
        problems.append(f"bias '{bias}': vLLM does not load adapter biases; train with bias 'none'")
    targets = _modules(adapter_config.get("target_modules"))
    if len(targets) == 1 and targets[0] not in VLLM_QWEN3_LORA_MODULES and targets[0] != "all-linear":
        # peft stores a regular expression as one string: vLLM matches it only against its own names.
        problems.append(f"target_modules is the pattern '{targets[0]}': vLLM needs the module names")
    else:
        unsupported = [t for t in targets if t not in VLLM_QWEN3_LORA_MODULES and t != "all-linear"]
        if unsupported:
            problems.append(
                f"target module(s) {', '.join(unsupported)}: vLLM's Qwen3 applies LoRA only to "
                f"{', '.join(sorted(VLLM_QWEN3_LORA_MODULES - {'qkv_proj', 'gate_up_proj'}))}"
            )
    if base_model.startswith(BUILTIN_PREFIX):
        problems.append(
            f"the base model {base_model} exists only inside cryptotune (no weights on disk): vLLM cannot "
            "load it; `cryptotune export JOB DIR --merged` writes a model vLLM serves"
        )
    return ServingCheck(
        loadable=not problems,
        base_model=base_model,
        name=name,
        rank=rank,
        max_lora_rank=max_rank,
        problems=problems,
    )
