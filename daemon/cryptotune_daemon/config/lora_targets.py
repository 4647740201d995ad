"""Decides whether ``lora.target_modules`` names modules the model has (peft skips the others silently).

Qwen3 dense models are known without loading anything, so their targets are checked when a
config is validated; any other model is checked in the ``init`` stage against the module names
of a weightless instance (see :func:`target_problems`). Nothing here downloads anything.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence

from cryptotune_daemon.path_text import expand_home

# The linear layers of every Qwen3 dense decoder layer (attention, then MLP).
QWEN3_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# peft's shorthand for every linear layer but the output head; the trainer also reads these aliases.
ALL_LINEAR = "all-linear"
ALL_LINEAR_ALIASES = (ALL_LINEAR, "all_linear", "all")
BUILTIN_QWEN3 = "builtin:tiny-qwen3"
_QWEN3_MODEL_TYPES = frozenset({"qwen3"})
# "Qwen3" in a name, but not Qwen3.5 or the Qwen3 variants whose layers differ (vision, audio, MoE, Next).
_QWEN3_NAME = re.compile(r"qwen3(?![.\d])", re.IGNORECASE)
_OTHER_LAYOUT = re.compile(r"\b(?:vl|omni|next|audio|moe)\b|-a\d+(?:\.\d+)?b\b", re.IGNORECASE)
_MAX_CONFIG_BYTES = 1 << 20
# Attention heads and key/value heads of the Qwen3 dense models, by size in the name (the -Base,
# -Thinking-2507 and -Instruct-2507 variants share their size's layout), and of the builtin model.
# A tensor-parallel degree must divide the KV heads (each rank computes whole heads).
QWEN3_HEADS: dict[str, tuple[int, int]] = {
    "0.6b": (16, 8),
    "1.7b": (16, 8),
    "4b": (32, 8),
    "8b": (32, 8),
    "14b": (40, 8),
    "32b": (64, 8),
    BUILTIN_QWEN3: (4, 2),
}
_QWEN3_SIZE = re.compile(r"qwen3-(\d+(?:\.\d+)?b)(?![.\d])", re.IGNORECASE)


def _local_model_type(model_name: str) -> str | None:
    """``model_type`` from a local model directory's config.json; None when there is none to read."""
    model_type = _local_config(model_name).get("model_type")
    return model_type if isinstance(model_type, str) else None


def _local_config(model_name: str) -> dict[str, object]:
    """A local model directory's config.json (empty when there is none to read)."""
    if model_name.startswith("builtin:") or "\x00" in model_name or len(model_name.encode()) > 4096:
        return {}
    try:
        config = expand_home(model_name) / "config.json"
        if not config.is_file() or config.stat().st_size > _MAX_CONFIG_BYTES:
            return {}
        value = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeError):
        return {}
    return value if isinstance(value, dict) else {}


def known_kv_heads(model_name: str) -> int | None:
    """The model's key/value heads when known without loading it: a local directory's config.json, the
    builtin model, or a Qwen3 dense model of a size in :data:`QWEN3_HEADS`; None otherwise (the job
    then checks the loaded model's config when it starts)."""
    local = _local_config(model_name)
    for key in ("num_key_value_heads", "num_attention_heads"):
        value = local.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if model_name == BUILTIN_QWEN3:
        return QWEN3_HEADS[BUILTIN_QWEN3][1]
    size = _QWEN3_SIZE.search(model_name)
    if size is None or not is_qwen3_family(model_name):
        return None
    heads = QWEN3_HEADS.get(size.group(1).lower())
    return heads[1] if heads is not None else None


def is_qwen3_family(model_name: str) -> bool:
    """Whether ``model_name`` is a Qwen3 dense model: the builtin one, or a local directory whose
    config.json says ``qwen3``, or (without such a file) a name that says Qwen3."""
    if model_name == BUILTIN_QWEN3:
        return True
    model_type = _local_model_type(model_name)
    if model_type is not None:
        return model_type in _QWEN3_MODEL_TYPES
    return bool(_QWEN3_NAME.search(model_name)) and not _OTHER_LAYOUT.search(model_name)


def _suggestion(target: str, available: Sequence[str]) -> str:
    lowered = {name.lower(): name for name in available}
    close = difflib.get_close_matches(target.lower(), list(lowered), n=1, cutoff=0.6)
    return f"did you mean '{lowered[close[0]]}'? " if close else ""


def target_problems(targets: Sequence[str], available: Iterable[str], model: str) -> list[tuple[int, str]]:
    """Each target that matches no module, as (position in the list, message naming what exists).

    Args:
        targets: ``lora.target_modules`` as configured.
        available: the last components of the model's adaptable (linear) module names.
        model: the model's name, for messages.

    Returns:
        One (position, message) per problem, in list order; empty when every target exists.
    """
    known = sorted(set(available))
    listed = ", ".join(known) or "none"
    problems: list[tuple[int, str]] = []
    has_all = [position for position, target in enumerate(targets) if target in ALL_LINEAR_ALIASES]
    if has_all and len(targets) > 1:
        problems.append(
            (
                has_all[0],
                f"'{targets[has_all[0]]}' already adapts every linear layer, so the other names in the list "
                f'would be ignored; use target_modules: ["{ALL_LINEAR}"] alone or list the modules',
            )
        )
        return problems
    seen: set[str] = set()
    for position, target in enumerate(targets):
        if target in ALL_LINEAR_ALIASES:
            continue
        if target in seen:
            problems.append((position, f"'{target}' is listed twice; remove the repeat"))
            continue
        seen.add(target)
        if target not in known:
            problems.append(
                (
                    position,
                    f"{model} has no module named '{target}', so it would get no adapter; "
                    f"{_suggestion(target, known)}the modules that can take one are: {listed} "
                    f"(or use '{ALL_LINEAR}')",
                )
            )
    return problems


def qwen3_target_problems(model_name: str, targets: Sequence[str]) -> list[tuple[int, str]]:
    """:func:`target_problems` for a Qwen3 model, known without loading it; empty for other models."""
    if not is_qwen3_family(model_name):
        return []
    return target_problems(targets, QWEN3_TARGET_MODULES, f"the Qwen3 model {model_name}")
