"""LoraTrainer on builtin:tiny-qwen3 with synthetic examples: learning, checkpoints, exact resume, reload."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from cryptotune_daemon.training.checkpoints import newest_verified
from cryptotune_daemon.training.models import build_tiny_qwen3
from tests.helpers.checkpoints import list_checkpoints
from tests.helpers.trainer import (
    HASHES,
    Recorder,
    adapter_tensors,
    make_examples,
    make_trainer,
    settings,
)


@pytest.mark.slow
def test_loss_falls_on_a_tiny_repeated_dataset(tmp_path: Path) -> None:
    examples = make_examples(4, seed=1) * 2
    recorder = Recorder()
    config = settings(
        learning_rate=3e-2,
        total_steps=30,
        micro_batch_size=4,
        gradient_accumulation_steps=1,
        lora_rank=8,
        lora_dropout=0.0,
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        lr_scheduler_type="constant",
        warmup_steps=0,
        save_steps=0,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10,
    )
    trainer = make_trainer(tmp_path, examples, config, recorder)
    trainer.setup()
    state = trainer.train()
    losses = [loss for _, loss in state.loss_history]
    assert len(losses) == 30
    # The tiny model is random and 64 wide: a 0.25 nat drop in 30 steps is real learning.
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.25, (first, last)
    progress = recorder.of("progress")
    assert [p["step"] for p in progress] == [10, 20, 30]
    assert all(p["tokens_per_second"] > 0 and p["total_steps"] == 30 for p in progress)
    # save_strategy "no": only the final checkpoint.
    assert [c.step for c in list_checkpoints(tmp_path)] == [30]


def test_checkpoints_events_and_eval(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = make_trainer(tmp_path, make_examples(10), settings(), recorder)
    trainer.setup()
    trainer.train()
    assert [c["step"] for c in recorder.of("checkpoint")] == [3, 6]
    evals = recorder.of("eval")
    assert [e["step"] for e in evals] == [3, 6]
    assert evals[0]["eval_loss"] > 0 and set(evals[0]["eval_loss_by_difficulty"]) <= {"1", "2", "3", "4"}
    checkpoint = newest_verified(tmp_path)
    assert checkpoint is not None and checkpoint.step == 6
    files = set(checkpoint.manifest["files"])
    assert {"adapter/adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pt"} <= files
    assert checkpoint.manifest["data_hash"] == HASHES.data
    state = json.loads((checkpoint.path / "trainer_state.json").read_text())
    assert state["step"] == 6 and len(state["loss_history"]) == 6


@pytest.mark.slow
def test_resume_continues_with_the_next_step_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    examples = make_examples(12, seed=3)
    config = settings(total_steps=7, save_steps=3)

    full_dir = tmp_path / "full"
    full = make_trainer(full_dir, examples, config, Recorder())
    full.setup()
    full_state = full.train()
    expected = adapter_tensors(full)

    # Stop the second run right after its step-3 checkpoint, as a crash or cancel would.
    part_dir = tmp_path / "part"
    first = make_trainer(part_dir, examples, config, Recorder())
    first.setup()

    def emit(event_type: str, data: Mapping[str, Any]) -> None:
        if event_type == "checkpoint" and data["step"] == 3:
            raise RuntimeError("stop")

    first.emit = emit
    with pytest.raises(RuntimeError):
        first.train()
    checkpoint = newest_verified(part_dir)
    assert checkpoint is not None and checkpoint.step == 3

    recorder = Recorder()
    resumed = make_trainer(part_dir, examples, config, recorder)
    resumed.setup(checkpoint)
    assert resumed.resumed_from_step == 3
    state = resumed.train()
    steps = [p["step"] for p in recorder.of("progress")]
    assert steps == [4, 5, 6, 7]
    assert [int(s) for s, _ in state.loss_history] == list(range(1, 8))
    assert state.loss_history == full_state.loss_history
    for name, tensor in adapter_tensors(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_resume_with_other_batch_settings_is_refused(tmp_path: Path) -> None:
    from cryptotune_daemon.errors import CryptotuneError, ErrorCode

    examples = make_examples(8)
    trainer = make_trainer(tmp_path, examples, settings(total_steps=2, save_steps=2), Recorder())
    trainer.setup()
    trainer.train()
    checkpoint = newest_verified(tmp_path)
    assert checkpoint is not None
    other = make_trainer(tmp_path, examples, settings(total_steps=4, micro_batch_size=1), Recorder())
    with pytest.raises(CryptotuneError) as raised:
        other.setup(checkpoint)
    assert raised.value.code is ErrorCode.RESUME_REFUSED
    assert "effective batch: 4 -> 2" in raised.value.message


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_saved_adapter_reproduces_the_trained_logits(tmp_path: Path) -> None:
    from peft import PeftModel

    examples = make_examples(6)
    trainer = make_trainer(tmp_path, examples, settings(total_steps=3, lora_dropout=0.0), Recorder())
    trainer.setup()
    trainer.train()
    trainer.model.save_pretrained(str(tmp_path / "adapter"))
    ids = torch.tensor([list(examples[0].input_ids)])
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(build_tiny_qwen3(), str(tmp_path / "adapter"))
        reloaded.eval()
        again = reloaded(input_ids=ids).logits
        base = build_tiny_qwen3()(input_ids=ids).logits
    torch.testing.assert_close(again, trained, atol=1e-5, rtol=0)
    # The adapter changed something (otherwise the check above proves nothing).
    assert not torch.allclose(base, trained, atol=1e-4)


def test_gradient_checkpointing_trains(tmp_path: Path) -> None:
    recorder = Recorder()
    config = settings(total_steps=2, gradient_checkpointing=True, save_strategy="no", eval_strategy="no")
    trainer = make_trainer(tmp_path, make_examples(6), config, recorder)
    trainer.setup()
    state = trainer.train()
    assert state.step == 2 and all(p["grad_norm"] > 0 for p in recorder.of("progress"))
