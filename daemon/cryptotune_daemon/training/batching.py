"""Batching: each rank's share of an epoch, micro-batches, packed rows and the collated tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cryptotune_daemon.constants import IGNORE_INDEX
from cryptotune_daemon.training.dataset import Example, seeded_permutation


def steps_per_epoch(num_samples: int, micro_batch_size: int, accumulation: int, world_size: int) -> int:
    """Optimiser steps per epoch (a last, shorter step still makes a step).

    ``world_size`` is the data-parallel degree: the number of rank groups that see different samples.
    """
    return math.ceil(num_samples / max(micro_batch_size * accumulation * max(world_size, 1), 1))


def epoch_steps(
    lengths: Sequence[int],
    *,
    samples_per_step: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
) -> list[list[int]]:
    """The samples of each optimiser step one data-parallel rank trains on in one epoch.

    A pure function of its arguments, so a resumed run recomputes the exact same order. The order
    is fixed per *global* optimiser step (``samples_per_step`` × ``world_size`` samples, the
    effective batch), not per rank or micro-batch: the whole job's step holds the same samples
    whether one process trains on all of them or several ranks split them, and however a rank cuts
    its share into micro-batches. That is what makes a data-parallel job the same training as one
    process, and what lets a resume (or an out-of-memory recovery) change the world size or the
    micro-batch/accumulation split of the same effective batch and continue with exactly the samples
    an uninterrupted run would have used.

    Steps are drawn at random (seeded), not grouped by length: packed batches carry no padding, so
    there is nothing to gain from making every step's samples alike. The step with the most tokens
    goes first, so an out-of-memory shows at once, not hours in. Inside a step, samples are dealt
    to the ranks longest first, round robin (so ranks get similar token counts), and each rank's share
    is longest first. A rank's share of the last, shorter step may be empty (the trainer then
    takes part in the step's collectives without contributing).

    Args:
        rank: the data-parallel rank (0 ≤ rank < world_size).
        world_size: the data-parallel degree.
    """
    count = len(lengths)
    order = seeded_permutation(count, seed * 1_000_003 + epoch) if shuffle else list(range(count))
    world = max(world_size, 1)
    width = samples_per_step * world
    steps = [order[i : i + width] for i in range(0, count, width)]
    if steps:
        heaviest = max(range(len(steps)), key=lambda s: sum(lengths[i] for i in steps[s]))
        steps[0], steps[heaviest] = steps[heaviest], steps[0]
    mine = []
    for step in steps:
        ranked = sorted(step, key=lambda j: (-lengths[j], j))
        mine.append(ranked[rank::world])
    return mine


def split_micro_batches(step: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Cuts one step's samples into micro-batches of ``micro_batch_size`` (the last may be shorter)."""
    return [list(step[i : i + micro_batch_size]) for i in range(0, len(step), micro_batch_size)]


def deal_samples(samples: Sequence[int], count: int) -> list[list[int]]:
    """Deals ``samples`` (longest first) round robin into ``count`` micro-batches of similar token counts.

    A pipeline step cuts its per-device batch this way; with fewer samples than ``count`` the last
    micro-batches are empty.
    """
    return [list(samples[i :: max(count, 1)]) for i in range(max(count, 1))]


# -- packing ---------------------------------------------------------------------------------------


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing bin packing of samples into rows of at most ``capacity`` tokens.

    Deterministic: samples are taken longest first, ties by position, and each goes into the first
    row it fits in. A sample longer than ``capacity`` gets a row of its own (samples are never cut).

    Returns:
        Positions into ``lengths``, one list per row.
    """
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, load in enumerate(loads):
            if load + lengths[i] <= capacity:
                rows[row].append(i)
                loads[row] += lengths[i]
                break
        else:
            rows.append([i])
            loads.append(lengths[i])
    return rows


def balanced_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """:func:`pack_rows`, then the narrowest capacity that still needs no more rows.

    Rows form a ``(rows, width)`` tensor, so the width is the longest row: first-fit decreasing
    fills the first rows and leaves the last one short, and every row is padded to the longest.
    Searching the smallest capacity (between the average row and ``capacity``) that still packs into
    as many rows evens the rows out, which cuts padding and the per-row attention cost.
    """
    rows = pack_rows(lengths, capacity)
    if len(rows) <= 1:
        return rows
    low = max(*lengths, math.ceil(sum(lengths) / len(rows)))
    high = capacity
    best = rows
    while low < high:
        middle = (low + high) // 2
        candidate = pack_rows(lengths, middle)
        if len(candidate) <= len(rows):
            best, high = candidate, middle
        else:
            low = middle + 1
    return best


def packed_shape(lengths: Sequence[int], capacity: int) -> tuple[int, int]:
    """``(rows, width)`` of the tensor :func:`collate_packed` builds for samples of these lengths."""
    rows = balanced_rows(lengths, capacity)
    return len(rows), max(sum(lengths[i] for i in row) for row in rows)


def collate_packed(
    examples: Sequence[Example], pad_token_id: int, row_tokens: int, *, single_row: bool = False
) -> dict[str, torch.Tensor]:
    """Packs a micro-batch padding-free: samples side by side in rows, attention kept within each sample.

    Samples go into rows of at most ``row_tokens`` tokens (:func:`balanced_rows`); ``position_ids``
    restart at 0 for every sample, which (with no attention mask and no cache) makes transformers
    build a block-diagonal causal mask for SDPA or pass sequence boundaries to FlashAttention's
    varlen kernel. A row shorter than the widest is filled with padding that forms a block of its
    own (positions restart, labels ignored). ``single_row`` concatenates the rows into one unpadded
    row, the layout FlashAttention's varlen path needs (it takes boundaries from a batch of one).

    Returns:
        ``input_ids``, ``position_ids``, ``labels`` and ``sample_ids`` (the sample's position in
        ``examples``, -1 on padding), each ``(rows, width)``. The label of each sample's first token
        is ignored: in a row it would otherwise be predicted from the previous sample's last token.
    """
    lengths = [e.length for e in examples]
    rows = balanced_rows(lengths, max(row_tokens, *lengths))
    if single_row:
        rows = [[i for row in rows for i in row]]
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    sample_ids = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            example, end = examples[i], offset + lengths[i]
            input_ids[r, offset:end] = torch.tensor(example.input_ids, dtype=torch.long)
            labels[r, offset + 1 : end] = torch.tensor(example.labels[1:], dtype=torch.long)
            position_ids[r, offset:end] = torch.arange(lengths[i])
            sample_ids[r, offset:end] = i
            offset = end
        position_ids[r, offset:] = torch.arange(width - offset)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "sample_ids": sample_ids}


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pads a micro-batch to its longest example.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` (padding labelled -100), each ``(B, T)``.
    """
    width = max(e.length for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : example.length] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, : example.length] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, : example.length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
