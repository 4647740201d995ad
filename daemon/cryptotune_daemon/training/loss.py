"""The training loss: next-token cross-entropy on labelled (assistant) tokens only."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
DEFAULT_CHUNK_TOKENS = 2048


def _causal_lm(model: nn.Module) -> Any:
    """The transformers causal LM inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def label_token_counts(labels: torch.Tensor) -> torch.Tensor:
    """Tokens that carry loss per example: labels after the one-token shift that are not ignored."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def per_example_loss_sums(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and label-token count per example.

    This is the one place the loss is computed, so a packed or fused path can replace it. Logits
    are computed only where a label exists, in chunks recomputed in the backward pass: with the
    151,936-wide vocabulary, full ``B × T × V`` logits would be the largest tensor by far.

    Args:
        model: a transformers causal LM, or a peft model wrapping one.
        input_ids: ``(B, T)`` token ids, right-padded.
        attention_mask: ``(B, T)`` 1 for real tokens.
        labels: ``(B, T)`` target ids, ``-100`` where no loss is taken (prompt, padding).
        chunk_tokens: how many labelled positions go through the LM head at once.

    Returns:
        ``(loss_sums, token_counts)``, both of shape ``(B,)``; loss sums are float32.
    """
    causal_lm = _causal_lm(model)
    backbone = causal_lm.get_decoder()
    head = causal_lm.get_output_embeddings()
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    rows = mask.nonzero(as_tuple=True)[0]
    selected = hidden[:, :-1][mask]
    wanted = targets[mask]
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=hidden.device)
    counts = mask.sum(dim=1)
    if wanted.numel() == 0:
        # Keep the graph connected so DDP's reducer sees every parameter used.
        return sums + hidden.sum().float() * 0.0, counts

    def chunk_losses(states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(head(states).float(), ids, reduction="none")

    pieces = []
    for start in range(0, wanted.numel(), chunk_tokens):
        states, ids = selected[start : start + chunk_tokens], wanted[start : start + chunk_tokens]
        if torch.is_grad_enabled() and states.requires_grad:
            # Recompute each chunk's logits in backward instead of keeping them all alive.
            pieces.append(checkpoint(chunk_losses, states, ids, use_reentrant=False))
        else:
            pieces.append(chunk_losses(states, ids))
    return sums.index_add(0, rows, torch.cat(pieces)), counts


class LossModule(nn.Module):
    """Wraps the (peft) model so its forward returns loss sums: the unit DDP wraps and syncs."""

    def __init__(self, model: nn.Module, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`per_example_loss_sums`."""
        return per_example_loss_sums(
            self.model, input_ids, attention_mask, labels, chunk_tokens=self.chunk_tokens
        )
