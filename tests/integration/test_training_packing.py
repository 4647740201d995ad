"""Packed and padded training runs see the same batches and reach the same losses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cryptotune_daemon.training.batching import split_micro_batches
from cryptotune_daemon.training.loss import per_example_loss_sums
from tests.helpers.trainer import Recorder, full_logits_loss, make_examples, make_trainer, settings


def test_packed_and_padded_training_give_the_same_batches_and_losses(tmp_path: Path) -> None:
    examples = make_examples(16, seed=9)
    config = settings(
        total_steps=4,
        micro_batch_size=3,
        gradient_accumulation_steps=2,
        lora_dropout=0.0,
        save_strategy="no",
        eval_strategy="no",
        max_seq_length=48,
    )
    trainers = {}
    for packing in (True, False):
        trainer = make_trainer(
            tmp_path / str(packing), examples, dataclasses.replace(config, packing=packing), Recorder()
        )
        trainer.setup()
        trainers[packing] = trainer
    packed, padded = trainers[True], trainers[False]
    steps = packed._steps(0)
    assert steps == padded._steps(0)
    with torch.no_grad():
        rows_saved = False
        for step in steps:
            for micro in split_micro_batches(step, config.micro_batch_size):
                chosen = [packed.train_examples[i] for i in micro]
                packed_batch, padded_batch = packed.collate_batch(chosen), padded.collate_batch(chosen)
                rows_saved |= packed_batch["input_ids"].shape[0] < len(chosen)
                assert "position_ids" in packed_batch and "attention_mask" in padded_batch
                sums, counts = per_example_loss_sums(packed.model, **packed_batch)
                padded_sums, padded_counts = per_example_loss_sums(padded.model, **padded_batch)
                reference, reference_counts = full_logits_loss(padded.model, chosen)
                assert counts.tolist() == padded_counts.tolist() == reference_counts.tolist()
                torch.testing.assert_close(sums.sum(), padded_sums.sum(), rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(sums.sum(), reference.sum(), rtol=1e-5, atol=1e-4)
        assert rows_saved  # the packed path really packed several samples per row
    results = {packing: trainer.train() for packing, trainer in trainers.items()}
    assert results[True].trained_tokens == results[False].trained_tokens > 0
    for (step, loss), (other_step, other_loss) in zip(
        results[True].loss_history, results[False].loss_history, strict=True
    ):
        assert step == other_step and loss == pytest.approx(other_loss, abs=1e-5)
