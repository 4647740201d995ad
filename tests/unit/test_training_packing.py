"""Padding-free packing: first-fit decreasing rows, no attention across samples, same loss as padding."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from cryptotune_daemon.training.batching import (
    balanced_rows,
    collate,
    collate_packed,
    epoch_steps,
    pack_rows,
    packed_shape,
    split_micro_batches,
)
from cryptotune_daemon.training.loss import IGNORE_INDEX, per_example_loss_sums
from cryptotune_daemon.training.models import build_tiny_qwen3
from tests.helpers.trainer import PAD, full_logits_loss, make_examples


def test_first_fit_decreasing_is_deterministic_and_never_overfills_or_cuts() -> None:
    lengths = [5, 9, 3, 7, 2, 8, 4]
    rows = pack_rows(lengths, 10)
    # Longest first, each into the first row with room: 9 | 8+2 | 7+3 | 5+4.
    assert rows == [[1], [5, 4], [3, 2], [0, 6]]
    assert rows == pack_rows(list(lengths), 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    # A sample longer than a row gets a row of its own; it is never split.
    assert pack_rows([12, 3, 4], 10) == [[0], [2, 1]]


def test_balanced_rows_keep_the_row_count_and_even_out_the_width() -> None:
    lengths = [300] * 8
    assert [len(row) for row in pack_rows(lengths, 2048)] == [6, 2]  # 1800 + 600 tokens
    assert [len(row) for row in balanced_rows(lengths, 2048)] == [4, 4]
    assert packed_shape(lengths, 2048) == (2, 1200)
    rng = random.Random(4)
    for _ in range(50):
        sample = [rng.randint(1, 60) for _ in range(rng.randint(1, 12))]
        capacity = rng.randint(max(sample), 150)
        rows = balanced_rows(sample, capacity)
        assert len(rows) == len(pack_rows(sample, capacity))
        assert all(sum(sample[i] for i in row) <= capacity for row in rows)
        assert sorted(i for row in rows for i in row) == list(range(len(sample)))


def test_collate_packed_restarts_positions_and_ignores_each_samples_first_label() -> None:
    examples = make_examples(3, seed=2)
    batch = collate_packed(examples, PAD, row_tokens=1000)
    assert batch["input_ids"].shape == (1, sum(e.length for e in examples))
    assert "attention_mask" not in batch  # attention_mask must be None for the block-diagonal mask
    ids, positions, labels, owners = (
        batch[k][0] for k in ("input_ids", "position_ids", "labels", "sample_ids")
    )
    for index, example in enumerate(examples):
        where = (owners == index).nonzero().flatten()
        assert where.numel() == example.length and bool((where.diff() == 1).all())
        assert ids[where].tolist() == list(example.input_ids)
        assert positions[where].tolist() == list(range(example.length))
        assert labels[where].tolist() == [IGNORE_INDEX, *example.labels[1:]]
    # Rows narrower than the batch are padded; padding is its own block and carries no loss.
    rows = collate_packed(examples, PAD, row_tokens=max(e.length for e in examples))
    assert rows["input_ids"].shape[0] == 3
    pad = rows["sample_ids"] == -1
    assert bool((rows["labels"][pad] == IGNORE_INDEX).all()) and bool((rows["input_ids"][pad] == PAD).all())


@torch.no_grad()
def test_logits_of_packed_samples_equal_each_sample_run_alone() -> None:
    model = build_tiny_qwen3()
    examples = make_examples(3, seed=6)
    # One row holding all three, and rows of at most 30 tokens (one padded).
    for row_tokens in (1000, 30):
        batch = collate_packed(examples, PAD, row_tokens=row_tokens)
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        for index, example in enumerate(examples):
            alone = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(logits[batch["sample_ids"] == index], alone, atol=1e-5, rtol=0)
    # Control: the same row with plain causal attention lets the second sample see the first.
    both = collate_packed(examples[:2], PAD, row_tokens=1000)
    causal = model(input_ids=both["input_ids"], use_cache=False).logits
    second = int(both["sample_ids"][0, -1])
    alone = model(input_ids=torch.tensor([examples[second].input_ids]), use_cache=False).logits[0]
    assert not torch.allclose(causal[both["sample_ids"] == second], alone, atol=1e-3)


@torch.no_grad()
def test_packed_chunked_loss_equals_the_paddedfull_logits_loss() -> None:
    model = build_tiny_qwen3()
    examples = make_examples(7, seed=5)
    packed = collate_packed(examples, PAD, row_tokens=50)
    assert 1 < packed["input_ids"].shape[0] < len(examples)
    sums, counts = per_example_loss_sums(model, **packed, chunk_tokens=7)
    padded_sums, padded_counts = per_example_loss_sums(model, **collate(examples, PAD), chunk_tokens=7)
    reference, reference_counts = full_logits_loss(model, examples)
    assert counts.tolist() == padded_counts.tolist() == reference_counts.tolist()
    assert counts.tolist() == [e.label_tokens for e in examples]
    torch.testing.assert_close(sums, reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(padded_sums, reference, rtol=1e-5, atol=1e-4)
    mean = float(sums.sum() / counts.sum())
    assert mean == pytest.approx(float(reference.sum() / reference_counts.sum()), abs=1e-5)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_fused_loss_gradients_equal_autograd_through_full_logits() -> None:
    import peft

    def lora_model() -> torch.nn.Module:
        config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        torch.manual_seed(0)  # the same LoRA initialisation for both models
        model = peft.get_peft_model(build_tiny_qwen3(), config)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # nonzero, so gradients reach lora_A too
                torch.nn.init.normal_(parameter, std=0.1)
        return model

    examples = make_examples(5, seed=8)
    fused = lora_model()
    sums, _ = per_example_loss_sums(fused, **collate_packed(examples, PAD, row_tokens=40), chunk_tokens=6)
    sums.sum().backward()
    reference = lora_model()
    reference_sums, _ = full_logits_loss(reference, examples)
    reference_sums.sum().backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    got = {n: p.grad for n, p in fused.named_parameters() if p.grad is not None}
    assert set(got) == set(expected) and len(got) == 8
    for name, grad in got.items():
        # fp32 sums in another order (chunks vs full logits): errors scale with the gradients' size.
        torch.testing.assert_close(
            grad, expected[name], rtol=1e-4, atol=1e-5 * float(expected[name].abs().max())
        )


def test_step_samples_do_not_depend_on_the_micro_batch_split() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(10, 90) for _ in range(37)]
    steps = epoch_steps(lengths, samples_per_step=8, seed=3, epoch=0)
    assert steps == epoch_steps(lengths, samples_per_step=8, seed=3, epoch=0)
    assert steps != epoch_steps(lengths, samples_per_step=8, seed=3, epoch=1)
    assert sorted(i for step in steps for i in step) == list(range(37))
    assert [len(s) for s in steps].count(8) == 4
    assert max(sum(lengths[i] for i in s) for s in steps) == sum(lengths[i] for i in steps[0])
    for step in steps:
        assert [lengths[i] for i in step] == sorted((lengths[i] for i in step), reverse=True)
        for micro in (1, 2, 3, 8):
            parts = split_micro_batches(step, micro)
            assert [i for part in parts for i in part] == step and max(map(len, parts)) <= micro
    # Data parallel: every rank gets as many steps, and together the ranks' shares of a step are
    # exactly the single process's step (same samples, no repeats).
    shards = [epoch_steps(lengths, samples_per_step=4, seed=3, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(steps) == 5
    for step, first, second in zip(steps, *shards, strict=True):
        assert sorted(first + second) == sorted(step)
    seen = Counter(i for shard in shards for step in shard for i in step)
    assert set(seen) == set(range(37)) and sum(seen.values()) == 37
