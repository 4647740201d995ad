"""Checks ``lora.target_modules`` against the module names of the model itself (a weightless instance)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cryptotune_daemon.config.lora_targets import target_problems
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.models import ModelSource, load_model_config

# Layer types peft can put an adapter on (Conv1D is GPT-2's linear layer).
_ADAPTABLE = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def adaptable_module_names(model: Any) -> list[str]:
    """The last name component of every module of ``model`` that can take a LoRA adapter."""
    names: set[str] = set()
    for name, module in model.named_modules():
        if name and (isinstance(module, _ADAPTABLE) or type(module).__name__ == "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def model_module_names(source: ModelSource) -> list[str]:
    """:func:`adaptable_module_names` of the model, built on the meta device (no weights read)."""
    config = load_model_config(source)
    from transformers import AutoModelForCausalLM

    auto: Any = AutoModelForCausalLM  # from_config is untyped
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=source.trust_remote_code)
    return adaptable_module_names(model)


def check_target_modules(source: ModelSource, targets: Sequence[str]) -> None:
    """Refuses target modules the model does not have, before anything is trained.

    Raises:
        CryptotuneError: CONFIG_INVALID naming each missing module and listing the model's modules.
    """
    problems = target_problems(targets, model_module_names(source), f"the model {source.name}")
    if problems:
        lines = [f"lora.target_modules[{position}]: {message}" for position, message in problems]
        raise CryptotuneError(
            ErrorCode.CONFIG_INVALID,
            "lora.target_modules names modules the model does not have; fix the config:\n" + "\n".join(lines),
        )
