"""The training loss: next-token cross-entropy on labelled (assistant) tokens only."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional
from torch.utils.checkpoint import checkpoint

from cryptotune_daemon.constants import IGNORE_INDEX

# Labelled positions that go through the LM head at once. One chunk's fp32 logits are
# chunk × 151,936 × 4 bytes (311 MB at 512): small next to a GPU's activations, and big enough that
# the head's matrix products stay efficient on CPUs and GPUs alike.
DEFAULT_CHUNK_TOKENS = 512


def _causal_lm(model: nn.Module) -> Any:
    """The transformers causal LM inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class _FusedLabelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of ``hidden @ weight.T`` whose backward needs no logits.

    Each chunk's logits live only inside the forward: the gradient with respect to the hidden
    states, ``(softmax - onehot) @ weight`` per token, is computed there and kept (tokens × hidden,
    tiny next to tokens × vocabulary). Compared with recomputing the logits in backward
    (activation checkpointing) this saves one of the head's three vocabulary-wide matrix products
    and holds one chunk of logits at a time instead of two. Only for a frozen, bias-free head
    (LoRA never trains Qwen3's tied embedding); other heads take the checkpointed path.

    All chunks share one fp32 buffer, updated in place: on a CPU every fresh vocabulary-wide
    tensor costs a round of page faults that takes about as long as the matrix product itself.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
    ) -> torch.Tensor:
        device = hidden.device
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else hidden.dtype
        weight = weight if weight.dtype == dtype else weight.to(dtype)
        count = targets.shape[0]
        losses = torch.empty(count, dtype=torch.float32, device=device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        buffer = torch.empty((min(chunk_tokens, count), weight.shape[0]), dtype=torch.float32, device=device)
        with torch.autocast(device.type, enabled=False):
            for start in range(0, count, chunk_tokens):
                end = min(start + chunk_tokens, count)
                states, ids = hidden[start:end].to(dtype), targets[start:end]
                logits = buffer[: end - start]
                if dtype == torch.float32:
                    torch.mm(states, weight.t(), out=logits)
                else:
                    logits.copy_(states @ weight.t())
                picked = logits.gather(1, ids.unsqueeze(1)).squeeze(1)
                peak = logits.amax(dim=1, keepdim=True)
                exps = logits.sub_(peak).exp_()
                total = exps.sum(dim=1, keepdim=True)
                losses[start:end] = (peak + total.log()).squeeze(1) - picked
                if grad_hidden is not None:
                    # softmax − onehot = d(loss_i)/d(logits_i), still in the same buffer.
                    probabilities = exps.div_(total)
                    rows = torch.arange(end - start, device=device)
                    probabilities[rows, ids] -= 1.0
                    if dtype == torch.float32:
                        grad_hidden[start:end] = probabilities @ weight
                    else:
                        grad_hidden[start:end] = probabilities.to(dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            return None, None, None, None
        # In fp32: the loss scale of fp16 training must not overflow a half-precision product.
        grad = (grad_hidden.float() * grad_losses.unsqueeze(1)).to(grad_hidden.dtype)
        return grad, None, None, None


def _fusable_head(head: nn.Module) -> bool:
    weight = getattr(head, "weight", None)
    return (
        type(head) is nn.Linear  # a peft-wrapped (trained) head is not, and needs its own forward
        and head.bias is None
        and isinstance(weight, torch.Tensor)
        and not weight.requires_grad
    )


def _label_losses(
    head: nn.Module, states: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Cross-entropy per labelled position, never holding more than one chunk's logits."""
    if _fusable_head(head):
        losses: torch.Tensor = _FusedLabelCrossEntropy.apply(states, head.weight, targets, chunk_tokens)
        return losses

    def chunk_losses(chunk: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(head(chunk).float(), ids, reduction="none")

    pieces = []
    for start in range(0, targets.numel(), chunk_tokens):
        chunk, ids = states[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if torch.is_grad_enabled() and chunk.requires_grad:
            # Recompute each chunk's logits in backward instead of keeping them all alive.
            pieces.append(checkpoint(chunk_losses, chunk, ids, use_reentrant=False))
        else:
            pieces.append(chunk_losses(chunk, ids))
    return torch.cat(pieces)


def per_example_loss_sums(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    position_ids: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and label-token count per example, for padded or packed batches.

    This is the one place the loss is computed. Logits are computed only where a label exists, in
    chunks: with the 151,936-wide vocabulary, full ``B × T × V`` logits would be the largest tensor
    by far, and the prompt needs none.

    Args:
        model: a transformers causal LM, or a peft model wrapping one.
        input_ids: ``(B, T)`` token ids: one example per row, right-padded
            (:func:`~cryptotune_daemon.training.batching.collate`), or packed rows
            (:func:`~cryptotune_daemon.training.batching.collate_packed`).
        attention_mask: ``(B, T)`` 1 for real tokens (padded batches); None for packed ones.
        labels: ``(B, T)`` target ids, ``-100`` where no loss is taken (prompt, padding).
        position_ids: packed batches: positions restarting at 0 for every sample.
        sample_ids: packed batches: which example each position belongs to (-1 on padding); the
            sums are then per example, not per row.
        chunk_tokens: how many labelled positions go through the LM head at once.

    Returns:
        ``(loss_sums, token_counts)``, both of shape ``(examples,)``; loss sums are float32.
    """
    assert labels is not None, "labels are required"
    causal_lm = _causal_lm(model)
    backbone = causal_lm.get_decoder()
    head = causal_lm.get_output_embeddings()
    # use_cache=False always: with a cache transformers ignores packed position ids and lets
    # samples attend to each other.
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    return label_loss_sums(head, hidden, labels, sample_ids, chunk_tokens)


def label_loss_sums(
    head: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    sample_ids: torch.Tensor | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and label-token count per example, from the final hidden states.

    The head half of :func:`per_example_loss_sums` (a pipeline's last stage starts here): logits
    only at labelled positions, in chunks of ``chunk_tokens``.

    Args:
        head: the LM head (``get_output_embeddings()``).
        hidden: ``(B, T, H)`` hidden states after the decoder's final norm.
        labels, sample_ids: as for :func:`per_example_loss_sums`.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    if sample_ids is None:
        owners = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)
        count = labels.shape[0]
    else:
        # A labelled position always follows a token of the same sample (first labels are ignored).
        owners = sample_ids[:, :-1]
        count = int(sample_ids.max().item()) + 1
    rows = owners[mask]
    counts = torch.zeros(count, dtype=torch.long, device=hidden.device).index_add_(
        0, rows, torch.ones_like(rows)
    )
    sums = torch.zeros(count, dtype=torch.float32, device=hidden.device)
    wanted = targets[mask]
    if wanted.numel() == 0:
        # Keep the graph connected so DDP's reducer sees every parameter used.
        return sums + hidden.sum().float() * 0.0, counts
    losses = _label_losses(head, hidden[:, :-1][mask], wanted, chunk_tokens)
    return sums.index_add(0, rows, losses), counts


class LossModule(nn.Module):
    """Wraps the (peft) model so its forward returns loss sums: the unit DDP wraps and syncs."""

    def __init__(self, model: nn.Module, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`per_example_loss_sums`."""
        return per_example_loss_sums(
            self.model,
            input_ids,
            attention_mask,
            labels,
            position_ids=position_ids,
            sample_ids=sample_ids,
            chunk_tokens=self.chunk_tokens,
        )
