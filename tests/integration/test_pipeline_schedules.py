"""Both pipeline schedules (GPipe, 1F1B) give one process's loss, gradients and global norm (2 gloo ranks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cryptotune_daemon.training.batching import collate_packed, deal_samples
from cryptotune_daemon.training.dataset import Example
from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.loss import LossModule, per_example_loss_sums

SCHEDULES = ("gpipe", "1f1b")


def _examples() -> list[Example]:
    generator = torch.Generator().manual_seed(5)
    examples = []
    for index, length in enumerate([31, 26, 19, 14, 9, 6]):
        ids = tuple(int(t) for t in torch.randint(10, 5000, (length,), generator=generator))
        prompt = length // 4
        examples.append(
            Example(
                index=index,
                line=index + 1,
                input_ids=ids,
                labels=(-100,) * prompt + ids[prompt:],
                prompt_tokens=prompt,
            )
        )
    return examples


def _model() -> Any:
    import peft

    from cryptotune_daemon.training.models import build_tiny_qwen3

    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = peft.get_peft_model(build_tiny_qwen3(), config)
    model.config.use_cache = False
    return model


def _reference() -> dict[str, Any]:
    """One process: the loss sum over the step and every LoRA gradient, the loss scaled by 1 / tokens."""
    model = _model()
    batch = collate_packed(_examples(), 0, 40)
    sums, counts = per_example_loss_sums(model, **batch)
    tokens = int(counts.sum())
    (sums.sum() / tokens).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    norm = float(torch.nn.utils.get_total_norm(list(grads.values())))
    return {"loss": float(sums.sum()), "tokens": tokens, "grads": grads, "norm": norm}


def _rank(rank: int, world: int, store: str, results: str) -> None:
    from cryptotune_daemon.training.strategies.pipeline import PipelineParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        context = DistContext(rank=rank, world_size=world)
        examples = _examples()
        tokens = sum(e.label_tokens for e in examples)
        out: dict[str, Any] = {}
        for schedule in SCHEDULES:
            model = _model()
            strategy = PipelineParallel(context, schedule=schedule, micro_batches=2)
            strategy.wrap(LossModule(model))
            # One optimiser step of two pipeline steps (accumulation 2) of 3 samples, 2 micro-batches each.
            loss = torch.zeros(())
            for group in ([0, 1, 2], [3, 4, 5]):
                pieces = deal_samples(group, strategy.pipeline_micro_batches)
                batches = [collate_packed([examples[i] for i in p], 0, 40) if p else None for p in pieces]
                loss += strategy.pipeline_step(
                    batches, pad_token_id=0, scale=1 / tokens, autocast=_no_autocast
                )
            params = [p for p in model.parameters() if p.requires_grad]
            norm = strategy.clip_grad_norm(params, float("inf"))
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, grads)
            adapter = strategy.adapter_state(model)
            out[schedule] = {"loss": float(loss), "norm": norm, "grads": gathered, "adapter": sorted(adapter)}
        if rank == 0:
            torch.save(out, results)
    finally:
        dist.destroy_process_group()


def _no_autocast() -> Any:
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.slow
def test_both_schedules_give_one_process_loss_gradients_and_norm(tmp_path: Path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    results = tmp_path / "results.pt"
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(results)), nprocs=2, join=True)
    reference = _reference()
    got = torch.load(results, weights_only=False)
    for schedule in SCHEDULES:
        run = got[schedule]
        assert abs(run["loss"] - reference["loss"]) <= 1e-5 * reference["loss"], schedule
        assert abs(run["norm"] - reference["norm"]) <= 1e-4 * reference["norm"], schedule
        grads = {n: g for part in run["grads"] for n, g in part.items()}
        # Each stage trains its own layers' LoRA; together, every LoRA parameter, once.
        assert set(grads) == set(reference["grads"]), schedule
        assert not set(run["grads"][0]) & set(run["grads"][1])
        for name, expected in reference["grads"].items():
            difference = float((grads[name] - expected).norm() / expected.norm())
            assert difference < 1e-4, f"{schedule}: {name} differs by {difference:.1e}"
        # The adapter is gathered from both stages, by name.
        assert len(run["adapter"]) == len(reference["grads"])
