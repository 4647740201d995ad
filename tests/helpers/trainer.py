"""LoraTrainer in tests: synthetic examples, settings, an event recorder and a tiny-Qwen3 trainer."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cryptotune_daemon.training.batching import collate
from cryptotune_daemon.training.checkpoints import Hashes
from cryptotune_daemon.training.dataset import Example
from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.loss import IGNORE_INDEX
from cryptotune_daemon.training.models import build_tiny_qwen3
from cryptotune_daemon.training.trainer import LoraTrainer, TrainerSettings

HASHES = Hashes(data="d" * 64, config="c" * 64, tokenizer="t" * 64)
PAD = 151643


def make_examples(count: int, *, seed: int = 0, vocab: int = 2000) -> list[Example]:
    """Synthetic records: a short prompt (masked) and a trained continuation of varying length."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(6, 10))]
        answer = [rng.randrange(vocab) for _ in range(rng.randint(8, 20))]
        ids = tuple(prompt + answer)
        labels = tuple([-100] * len(prompt) + answer)
        examples.append(
            Example(
                index=index,
                line=index + 1,
                input_ids=ids,
                labels=labels,
                prompt_tokens=len(prompt),
                difficulty=index % 4 + 1,
                crypto_terms=("AES",),
            )
        )
    return examples


def settings(**overrides: Any) -> TrainerSettings:
    base: dict[str, Any] = {
        "learning_rate": 5e-3,
        "weight_decay": 0.0,
        "lr_scheduler_type": "linear",
        "warmup_steps": 1,
        "max_grad_norm": 1.0,
        "total_steps": 6,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "precision": "fp32",
        "gradient_checkpointing": False,
        "seed": 7,
        "lora_rank": 4,
        "lora_alpha": 8.0,
        "lora_dropout": 0.1,
        "lora_target_modules": ("q_proj", "v_proj"),
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 3,
        "eval_strategy": "steps",
        "eval_steps": 3,
    }
    base.update(overrides)
    return TrainerSettings(**base)


class Recorder:
    """Collects emitted events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event_type: str, data: Mapping[str, Any]) -> None:
        self.events.append((event_type, dict(data)))

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == event_type]


def make_trainer(
    output_dir: Path, examples: list[Example], config: TrainerSettings, recorder: Recorder
) -> LoraTrainer:
    return LoraTrainer(
        base_model=build_tiny_qwen3(),
        train_examples=examples[2:],
        eval_examples=examples[:2],
        settings=config,
        hashes=HASHES,
        output_dir=output_dir,
        dist=DistContext(),
        pad_token_id=PAD,
        emit=recorder,
    )


def adapter_tensors(trainer: LoraTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def full_logits_loss(model: torch.nn.Module, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain reference: a padded batch, full logits, cross-entropy over every position."""
    batch = collate(examples, PAD)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    targets = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    return losses.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)
