"""Evaluation: eval loss and perplexity (overall and per difficulty) and generation checks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cryptotune_daemon.config.schema import generation_record_count
from cryptotune_daemon.data.template import THINK_CLOSE
from cryptotune_daemon.training.batching import collate, collate_packed
from cryptotune_daemon.training.dataset import Example
from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.loss import per_example_loss_sums

DIFFICULTY_KEYS = ("1", "2", "3", "4")
_UNKNOWN = "unknown"
_SLOTS = ("all", *DIFFICULTY_KEYS, _UNKNOWN)
SAMPLE_TEXT_LIMIT = 600
LISTED_SAMPLES = 3

AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class EvalLoss:
    """Token-weighted eval loss.

    Attributes:
        loss: mean cross-entropy per label token (None without eval tokens).
        perplexity: ``exp(loss)`` (see :func:`perplexity`).
        by_difficulty: loss per difficulty ("1"–"4", plus "unknown" for records without one).
        tokens: label tokens evaluated.
        perplexity_by_difficulty: ``exp`` of each ``by_difficulty`` loss, same keys.
    """

    loss: float | None
    perplexity: float | None
    by_difficulty: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    perplexity_by_difficulty: dict[str, float | None] = field(default_factory=dict)


def perplexity(loss: float | None) -> float | None:
    """``exp(loss)``, infinite instead of overflowing."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(loss) if loss < 700 else math.inf


def _slot(example: Example) -> int:
    if example.difficulty is not None and str(example.difficulty) in DIFFICULTY_KEYS:
        return DIFFICULTY_KEYS.index(str(example.difficulty)) + 1
    return len(_SLOTS) - 1


@torch.no_grad()
def compute_eval_loss(
    model: torch.nn.Module,
    examples: Sequence[Example],
    *,
    batch_size: int,
    pad_token_id: int,
    dist: DistContext,
    autocast: AutocastFactory = contextlib.nullcontext,
    packing: bool = True,
    row_tokens: int = 0,
    single_row: bool = False,
    loss_sums: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> EvalLoss:
    """Eval loss over ``examples``, sharded over ranks and summed (every rank must call it).

    Args:
        model: the (peft) causal LM, not the DDP wrapper.
        examples: the eval split.
        batch_size: examples per forward pass.
        pad_token_id: padding id for batches.
        dist: this rank's context.
        autocast: returns the mixed-precision context for forward passes.
        packing: pack each batch padding-free (see
            :func:`~cryptotune_daemon.training.batching.collate_packed`) instead of padding it.
        row_tokens: packed rows' capacity (0: the longest example of the batch).
        single_row: pack into one unpadded row (FlashAttention's varlen layout).
        loss_sums: computes a batch's per-example loss sums and label counts instead of the whole
            ``model`` (a pipeline's stages); None: :func:`per_example_loss_sums` on ``model``.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(_SLOTS), dtype=torch.float64, device=dist.device)
    counts = torch.zeros(len(_SLOTS), dtype=torch.float64, device=dist.device)
    mine = sorted(list(examples)[dist.rank :: dist.world_size], key=lambda e: e.length)
    try:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            if packing:
                cpu_batch = collate_packed(chunk, pad_token_id, row_tokens, single_row=single_row)
            else:
                cpu_batch = collate(chunk, pad_token_id)
            batch = {k: v.to(dist.device) for k, v in cpu_batch.items()}
            with autocast():
                if loss_sums is not None:
                    example_sums, token_counts = loss_sums(batch)
                else:
                    example_sums, token_counts = per_example_loss_sums(
                        model,
                        batch["input_ids"],
                        batch.get("attention_mask"),
                        batch["labels"],
                        position_ids=batch.get("position_ids"),
                        sample_ids=batch.get("sample_ids"),
                    )
            for example, loss_sum, count in zip(
                chunk, example_sums.tolist(), token_counts.tolist(), strict=True
            ):
                for slot in (0, _slot(example)):
                    sums[slot] += loss_sum
                    counts[slot] += count
    finally:
        model.train(was_training)
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(counts)
    totals, tokens = sums.tolist(), counts.tolist()
    loss = totals[0] / tokens[0] if tokens[0] else None
    by_difficulty = {name: totals[i] / tokens[i] for i, name in enumerate(_SLOTS) if i > 0 and tokens[i] > 0}
    return EvalLoss(
        loss=loss,
        perplexity=perplexity(loss),
        by_difficulty=by_difficulty,
        tokens=int(tokens[0]),
        perplexity_by_difficulty={name: perplexity(value) for name, value in by_difficulty.items()},
    )


def answer_part(text: str) -> str | None:
    """What follows the first ``</think>`` (None when the reasoning was never closed)."""
    if THINK_CLOSE not in text:
        return None
    return text.split(THINK_CLOSE, 1)[1]


def thinking_format_ok(text: str) -> bool:
    """Generated text is well formed: a ``</think>`` followed by a non-empty answer."""
    answer = answer_part(text)
    return answer is not None and bool(answer.strip())


def term_recall(answer: str | None, terms: Sequence[str]) -> float | None:
    """Share of ``terms`` that occur in the answer (case-insensitive); None when there are no terms."""
    wanted = [t for t in terms if t.strip()]
    if not wanted:
        return None
    text = (answer or "").casefold()
    return sum(1 for t in wanted if t.casefold() in text) / len(wanted)


@dataclass(frozen=True)
class GenerationResult:
    """Generation checks over a sample of the eval split.

    Attributes:
        thinking_format_rate: share of generations with ``</think>`` and a non-empty answer.
        crypto_term_recall: mean share of each record's crypto terms found in its answer part.
        samples: a few generations for the report (truncated).
        evaluated: how many records were generated for.
        length_cap_rate: share of generations that stopped at ``max_new_tokens`` instead of ending.
        generated_tokens: new tokens generated for them in all (each up to and including its
            end-of-turn token; the padding of rows that ended early in a batch is not counted).
    """

    thinking_format_rate: float | None
    crypto_term_recall: float | None
    samples: list[dict[str, Any]]
    evaluated: int
    generated_tokens: int = 0
    length_cap_rate: float | None = None


def generated_part(row: Sequence[int], stop_ids: set[int]) -> list[int]:
    """The tokens a batch row generated: up to and including its first stop token (the rest, if any,
    is padding added after the row ended while others in the batch went on)."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return list(row[: position + 1])
    return list(row)


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Input ids and attention mask of prompts padded on the left to one width (for ``generate``)."""
    width = max((len(p) for p in prompts), default=0)
    ids = [[pad_id] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return ids, mask


@torch.no_grad()
def generation_eval(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    dist: DistContext,
    autocast: AutocastFactory = contextlib.nullcontext,
    batch_size: int = 1,
    max_generated_tokens: int | None = None,
) -> GenerationResult:
    """Greedy generation from each example's prompt (which ends with ``<think>\\n``), sharded over ranks.

    Prompts of similar length are generated together, ``batch_size`` at a time (left-padded); a
    batch ends when each of its rows has produced an end-of-turn token or ``max_new_tokens``. With
    ``max_generated_tokens`` only the first :func:`~cryptotune_daemon.config.schema.generation_record_count`
    examples are generated,
    so the checks never generate more tokens than that in all.

    Every rank must call it; the results are gathered so every rank returns the same.
    """
    from transformers import GenerationConfig as _GenerationConfig

    generation_config_cls: Any = _GenerationConfig  # its __init__ is untyped

    if max_generated_tokens is not None:
        examples = examples[: generation_record_count(len(examples), max_new_tokens, max_generated_tokens)]
    eos_ids = [
        i for i in (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id) if i is not None
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    config = generation_config_cls(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=sorted(set(eos_ids)),
        pad_token_id=pad_id,
    )
    stop_ids = set(eos_ids)
    was_training = model.training
    model.eval()
    local: list[dict[str, Any]] = []
    mine = sorted(range(dist.rank, len(examples), dist.world_size), key=lambda p: examples[p].prompt_tokens)
    try:
        for start in range(0, len(mine), max(batch_size, 1)):
            positions = mine[start : start + max(batch_size, 1)]
            prompts = [list(examples[p].input_ids[: examples[p].prompt_tokens]) for p in positions]
            ids, mask = left_padded(prompts, pad_id)
            input_ids = torch.tensor(ids, device=dist.device)
            with autocast():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.tensor(mask, device=dist.device),
                    generation_config=config,
                )
            for position, prompt, row in zip(
                positions, prompts, output[:, input_ids.shape[1] :].tolist(), strict=True
            ):
                example = examples[position]
                generated = generated_part(row, stop_ids)
                text = tokenizer.decode(generated, skip_special_tokens=True)
                answer = answer_part(text)
                local.append(
                    {
                        "position": position,
                        "tokens": len(generated),
                        "index": example.index,
                        "difficulty": example.difficulty,
                        "thinking_ok": thinking_format_ok(text),
                        "recall": term_recall(answer, example.crypto_terms),
                        "capped": not (generated and generated[-1] in stop_ids)
                        and len(generated) >= max_new_tokens,
                        "prompt": tokenizer.decode(prompt)[-SAMPLE_TEXT_LIMIT:],
                        "generated": text[:SAMPLE_TEXT_LIMIT],
                        "crypto_terms": list(example.crypto_terms),
                    }
                )
    finally:
        model.train(was_training)
    results = sorted((r for part in dist.all_gather_object(local) for r in part), key=lambda r: r["position"])
    if not results:
        return GenerationResult(None, None, [], 0)
    recalls = [r["recall"] for r in results if r["recall"] is not None]
    return GenerationResult(
        thinking_format_rate=sum(1 for r in results if r["thinking_ok"]) / len(results),
        crypto_term_recall=sum(recalls) / len(recalls) if recalls else None,
        samples=[
            {k: v for k, v in r.items() if k not in ("position", "tokens", "capped")}
            for r in results[:LISTED_SAMPLES]
        ],
        evaluated=len(results),
        length_cap_rate=sum(1 for r in results if r["capped"]) / len(results),
        generated_tokens=sum(int(r["tokens"]) for r in results),
    )
