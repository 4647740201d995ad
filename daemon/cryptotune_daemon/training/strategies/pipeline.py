"""``pipeline_parallel``: decoder layers cut into consecutive stages, one per rank, micro-batches pipelined.

Built on ``torch.distributed.pipelining``: each rank wraps its :class:`StageModule` in a
``PipelineStage`` and runs ``ScheduleGPipe`` or ``Schedule1F1B`` (``parallel.pipeline_schedule``)
over the ``parallel.pipeline_micro_batches`` micro-batches each per-device batch is cut into.

How it keeps the single-process training:

- **Same samples on every stage.** The data-parallel degree is 1: every rank collates the same
  per-device batch, so each stage builds its own position ids (which carry the packing: they
  restart for every sample, and every stage needs them for its rotary embeddings and its
  block-diagonal attention mask) and the last stage its own labels. Only hidden states travel
  between stages (and their gradients back).
- **Static shapes per pipeline step.** ``PipelineStage`` exchanges fixed-shape tensors. The
  micro-batches of one pipeline step are packed independently and then padded to the widest
  ``(rows, width)`` among them: padding starts a block of its own (positions restart, labels
  ignored), which the causal mask keeps away from every real token. A new shape builds a new
  ``PipelineStage`` with that shape declared (static metadata, no shape inference passes).
- **Loss on the last stage, normalised globally.** The schedule's ``loss_fn`` runs the chunked
  label-only loss (:func:`~cryptotune_daemon.training.loss.label_loss_sums`) on the last stage's
  normed hidden states and multiplies by the trainer's scale (1 / label tokens of the whole
  optimiser step); ``scale_grads=False`` keeps the schedule from dividing again. The step's loss
  sum is broadcast from the last stage, so rank 0 (stage 0, the one that writes events) reports
  the global loss of the step.
- **Global-norm clipping over all stages.** Squared gradient norms are summed over the ranks.
- **Checkpoints by name.** The frozen weights of other stages are freed but their modules stay,
  so every parameter keeps its name; the adapter and optimiser state are gathered from all
  stages by name, and a checkpoint loads under any other strategy.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cryptotune_daemon.config.pipeline import stage_layers
from cryptotune_daemon.constants import IGNORE_INDEX
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.distributed import DistContext
from cryptotune_daemon.training.loss import DEFAULT_CHUNK_TOKENS, label_loss_sums
from cryptotune_daemon.training.strategies.base import (
    SameSamplesOnEveryRank,
    by_name_state,
    trainable_parameters,
)

Batch = dict[str, torch.Tensor]
AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]
LossSums = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]


def _causal_lm(model: nn.Module) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _mask_arguments(
    function: Callable[..., Any], config: Any, hidden: torch.Tensor, position_ids: Any
) -> Any:
    """Keyword arguments of transformers' mask builders, whichever names this version uses."""
    names = inspect.signature(function).parameters
    arguments: dict[str, Any] = {"config": config, "attention_mask": None, "position_ids": position_ids}
    arguments["inputs_embeds" if "inputs_embeds" in names else "input_embeds"] = hidden
    for name in ("cache", "past_key_values"):
        if name in names:
            arguments[name] = None
    if "cache_position" in names:
        arguments["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
    return arguments


class StageModule(nn.Module):
    """One pipeline stage of a (peft-wrapped) transformers decoder: what ``PipelineStage`` runs.

    Holds references to the decoder's own modules (so parameters are shared with, and named by,
    the peft model): the embeddings on the first stage, its consecutive decoder layers, the rotary
    embedding, and the final norm and LM head on the last stage. Its forward is the decoder's
    forward restricted to those layers: the causal mask is built from the packed position ids
    (block-diagonal, as the whole decoder builds it), without a cache.

    Args:
        decoder: the causal LM's decoder (``get_decoder()``).
        head: the LM head (``get_output_embeddings()``); used by the last stage's loss.
        layers: the indices of this stage's decoder layers.
        first, last: whether this is the first / last stage.
        hidden_dtype: the dtype of the hidden states sent between stages.
    """

    def __init__(
        self,
        decoder: nn.Module,
        head: nn.Module,
        layers: range,
        *,
        first: bool,
        last: bool,
        hidden_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        blocks: Any = decoder.layers
        self.config = decoder.config
        self.embed: nn.Module | None = decoder.embed_tokens if first else None  # type: ignore[assignment]
        self.layers = nn.ModuleList([blocks[i] for i in layers])
        self.layer_indices = list(layers)
        self.rotary: nn.Module = decoder.rotary_emb  # type: ignore[assignment]
        self.norm: nn.Module | None = decoder.norm if last else None  # type: ignore[assignment]
        self.head = head if last else None
        self.hidden_dtype = hidden_dtype
        self.sliding = bool(getattr(decoder, "has_sliding_layers", False))
        self.autocast: AutocastFactory = contextlib.nullcontext

    @property
    def first(self) -> bool:
        return self.embed is not None

    @property
    def last(self) -> bool:
        return self.head is not None

    def _masks(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
        from transformers import masking_utils

        build = masking_utils.create_causal_mask
        masks = {"full_attention": build(**_mask_arguments(build, self.config, hidden, position_ids))}
        if self.sliding:
            sliding = masking_utils.create_sliding_window_causal_mask
            masks["sliding_attention"] = sliding(
                **_mask_arguments(sliding, self.config, hidden, position_ids)
            )
        return masks

    def forward(self, inputs: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (first stage) or the previous stage's hidden states → this stage's hidden states."""
        with self.autocast():
            hidden = self.embed(inputs) if self.embed is not None else inputs
            masks = self._masks(hidden, position_ids)
            embeddings = self.rotary(hidden, position_ids)
            kinds = getattr(self.config, "layer_types", None)
            for index, layer in zip(self.layer_indices, self.layers, strict=True):
                kind = kinds[index] if kinds else "full_attention"
                output = layer(
                    hidden,
                    attention_mask=masks[kind],
                    position_ids=position_ids,
                    position_embeddings=embeddings,
                )
                hidden = output[0] if isinstance(output, tuple) else output
            if self.norm is not None:
                hidden = self.norm(hidden)
        return hidden.to(self.hidden_dtype)


def release_other_stages(model: nn.Module, stage: nn.Module) -> None:
    """Frees the frozen weights this rank's ``stage`` does not use, and stops training other stages' LoRA.

    The modules stay where they are (emptied, not removed): every parameter keeps its name, and peft
    still finds every LoRA layer when it saves an adapter gathered from all stages. A weight shared
    with this stage (Qwen3's LM head is the tied embedding) is kept.
    """
    owned = {id(p) for p in stage.parameters()}
    for _, param in model.named_parameters(remove_duplicate=False):
        if id(param) in owned:
            continue
        if param.requires_grad:
            param.requires_grad_(False)  # another stage's LoRA: trained and saved there
        elif param.numel():
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)


def pad_micro_batches(batches: Sequence[Batch | None], pad_token_id: int) -> list[Batch]:
    """Packed micro-batches padded to one ``(rows, width)``: the fixed shape a pipeline step sends.

    A wider row is continued with padding positions that restart at 0 (a block of their own: the
    causal mask keeps real tokens from seeing it); missing rows, and None (an empty micro-batch),
    are all padding. Labels are ignored and sample ids -1 on padding.
    """
    present = [b for b in batches if b is not None]
    if not present:
        raise ValueError("a pipeline step needs at least one micro-batch with samples")
    if any("position_ids" not in b or "sample_ids" not in b for b in present):
        raise CryptotuneError(
            ErrorCode.CONFIG_INVALID,
            "pipeline_parallel trains packed micro-batches only (position ids per sample)",
        )
    rows = max(b["input_ids"].shape[0] for b in present)
    width = max(b["input_ids"].shape[1] for b in present)
    padded: list[Batch] = []
    for batch in batches:
        ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
        labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
        samples = torch.full((rows, width), -1, dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long).repeat(rows, 1)
        if batch is not None:
            r, w = batch["input_ids"].shape
            ids[:r, :w] = batch["input_ids"]
            labels[:r, :w] = batch["labels"]
            samples[:r, :w] = batch["sample_ids"]
            positions[:r, :w] = batch["position_ids"]
            positions[:r, w:] = torch.arange(width - w, dtype=torch.long)
        padded.append({"input_ids": ids, "position_ids": positions, "labels": labels, "sample_ids": samples})
    return padded


class PipelineParallel(SameSamplesOnEveryRank):
    """Pipeline parallelism: one stage of consecutive decoder layers per rank (a 1-D ``pp`` mesh).

    Every rank sees the same samples (data-parallel degree 1). A pipeline step takes the
    per-device batch (``per_device_train_batch_size`` samples), deals its samples longest first
    round robin into ``micro_batches`` micro-batches (``pipeline_micro_batches``; empty ones are left
    out) and runs them through the schedule; the ``gradient_accumulation_steps`` pipeline steps of
    an optimiser step accumulate gradients. The effective batch is
    ``per_device_train_batch_size`` × ``gradient_accumulation_steps``, the same samples a single
    process trains on per step. A single process trains unwrapped.

    Args:
        dist: this process's place in the job.
        schedule: ``gpipe`` or ``1f1b``.
        micro_batches: micro-batches per pipeline step.
    """

    name = "pipeline_parallel"

    def __init__(self, dist: DistContext, schedule: str = "1f1b", micro_batches: int = 2) -> None:
        super().__init__(dist)
        self.schedule = schedule
        self.pipeline_micro_batches = max(micro_batches, 1)
        self._stage: StageModule | None = None
        self._trainable_names: list[str] = []
        self._chunk_tokens = DEFAULT_CHUNK_TOKENS
        self._hidden_size = 0
        self._cached: tuple[tuple[Any, ...], Any] | None = None
        # Set around one pipeline step, read by the last stage's loss function.
        self._scale = 1.0
        self._scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss
        self._loss_sum = torch.zeros(())

    # -- layout ------------------------------------------------------------------------------------------

    @property
    def pipelined(self) -> bool:
        return self.dist.distributed

    @property
    def is_first(self) -> bool:
        return self.dist.rank == 0

    @property
    def is_last(self) -> bool:
        return self.dist.rank == self.dist.world_size - 1

    def mesh(self) -> dict[str, int]:
        return {"pp": self.dist.world_size}

    # -- model -------------------------------------------------------------------------------------------

    def wrap(self, loss_module: nn.Module) -> nn.Module:
        """Builds this rank's stage and frees the frozen weights of every other stage (names kept)."""
        if not self.dist.distributed:
            return loss_module
        model: nn.Module = loss_module.model  # type: ignore[assignment]  # the LossModule's peft model
        self._chunk_tokens = int(getattr(loss_module, "chunk_tokens", DEFAULT_CHUNK_TOKENS))
        causal_lm = _causal_lm(model)
        decoder = causal_lm.get_decoder()
        head = causal_lm.get_output_embeddings()
        blocks = decoder.layers
        try:
            ranges = stage_layers(len(blocks), self.dist.world_size)
        except ValueError as error:
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                f"parallel.world_size: {error}; set world_size to at most {len(blocks)} for "
                "pipeline_parallel",
            ) from error
        mine = ranges[self.dist.rank]
        self._trainable_names = [n for n, _ in trainable_parameters(model)]
        self._hidden_size = int(decoder.config.hidden_size)
        self._stage = StageModule(
            decoder,
            head,
            mine,
            first=self.is_first,
            last=self.is_last,
            hidden_dtype=decoder.embed_tokens.weight.dtype,
        )
        release_other_stages(model, self._stage)
        return loss_module

    def _schedule(self, rows: int, width: int, *, train: bool, micro_batches: int) -> Any:
        """The schedule of a pipeline step of ``(rows, width)`` micro-batches (reused while it repeats)."""
        key = (rows, width, train, micro_batches)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        assert self._stage is not None, "wrap() first"
        self._cached = None  # the previous stage's buffers go before the new ones are made
        hidden = torch.empty(
            (rows, width, self._hidden_size),
            dtype=self._stage.hidden_dtype,
            device="meta",
            requires_grad=train,
        )
        ids = torch.empty((rows, width), dtype=torch.long, device="meta")
        stage = PipelineStage(
            self._stage,
            self.dist.rank,
            self.dist.world_size,
            self.dist.device,
            input_args=ids if self.is_first else hidden,
            output_args=hidden,
        )
        one_f_one_b = train and self.schedule == "1f1b" and micro_batches >= self.dist.world_size
        kind = Schedule1F1B if one_f_one_b else ScheduleGPipe
        schedule = kind(stage, micro_batches, loss_fn=self._loss if train else None, scale_grads=False)
        self._cached = (key, schedule)
        return schedule

    def _run(self, batches: list[Batch], *, train: bool) -> Any:
        """Runs one pipeline step over ``batches`` (all of one shape); the last stage gets the output."""
        rows, width = batches[0]["input_ids"].shape
        schedule = self._schedule(rows, width, train=train, micro_batches=len(batches))
        device = self.dist.device
        args = (torch.cat([b["input_ids"] for b in batches]).to(device),) if self.is_first else ()
        kwargs: dict[str, Any] = {"position_ids": torch.cat([b["position_ids"] for b in batches]).to(device)}
        if self.is_last and train:
            kwargs["target"] = torch.cat(
                [torch.stack([b["labels"], b["sample_ids"]], dim=1) for b in batches]
            ).to(device)
        if "return_outputs" in inspect.signature(schedule.step).parameters:
            kwargs["return_outputs"] = not train
        return schedule.step(*args, **kwargs)

    def _loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The schedule's loss function on the last stage: this micro-batch's share of the step's loss."""
        assert self._stage is not None and self._stage.head is not None
        with self._stage.autocast():
            sums, _ = label_loss_sums(
                self._stage.head, hidden, target[:, 0], target[:, 1], chunk_tokens=self._chunk_tokens
            )
        self._loss_sum += sums.detach().sum().to(self._loss_sum.device)
        return self._scale_loss(sums.sum() * self._scale)

    def pipeline_step(
        self,
        batches: Sequence[Batch | None],
        *,
        pad_token_id: int,
        scale: float,
        autocast: AutocastFactory,
        scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Forward and backward of one pipeline step; gradients accumulate in this stage's parameters.

        Args:
            batches: the step's packed micro-batches (None: an empty one, all padding).
            pad_token_id: the token id of padding.
            scale: what each label token's loss is multiplied by (1 / label tokens of the optimiser step).
            autocast: the mixed-precision context of forward passes.
            scale_loss: the fp16 gradient scaler's ``scale`` (None: no scaling).

        Returns:
            The summed loss of the step's label tokens, on every rank.
        """
        assert self._stage is not None, "wrap() first"
        self._stage.autocast = autocast
        self._scale = scale
        self._scale_loss = scale_loss or (lambda loss: loss)
        self._loss_sum = torch.zeros((), dtype=torch.float32, device=self.dist.device)
        # Empty micro-batches (fewer samples than micro-batches) are left out: padding costs as much
        # as samples. Fewer micro-batches than stages run GPipe (1F1B needs one per stage; the
        # gradients are the same).
        present: list[Batch | None] = [b for b in batches if b is not None]
        self._run(pad_micro_batches(present, pad_token_id), train=True)
        total = self._loss_sum
        torch.distributed.broadcast(total, src=self.dist.world_size - 1)
        return total

    def eval_loss_sums(self, autocast: AutocastFactory, pad_token_id: int) -> LossSums | None:
        """Per-example loss sums of one eval batch through the pipeline, on every rank."""
        if not self.pipelined:
            return None

        def loss_sums(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            assert self._stage is not None
            self._stage.autocast = autocast
            [padded] = pad_micro_batches([{k: v.cpu() for k, v in batch.items()}], pad_token_id)
            output = self._run([padded], train=False)
            examples = int(padded["sample_ids"].max()) + 1
            if self.is_last:
                with autocast():
                    sums, counts = label_loss_sums(
                        self._stage.head,  # type: ignore[arg-type]
                        output,
                        padded["labels"].to(self.dist.device),
                        padded["sample_ids"].to(self.dist.device),
                        chunk_tokens=self._chunk_tokens,
                    )
                sums = sums.float()
            else:
                sums = torch.zeros(examples, dtype=torch.float32, device=self.dist.device)
                counts = torch.zeros(examples, dtype=torch.long, device=self.dist.device)
            torch.distributed.broadcast(sums, src=self.dist.world_size - 1)
            torch.distributed.broadcast(counts, src=self.dist.world_size - 1)
            return sums, counts

        return loss_sums

    @contextlib.contextmanager
    def evaluating(self, module: nn.Module) -> Any:
        """Every rank evaluates every example (stage by stage); the last stage's sums are broadcast."""
        if not self.dist.distributed:
            yield None
            return
        yield DistContext(rank=0, world_size=1, local_rank=self.dist.local_rank, device=self.dist.device)

    def clip_grad_norm(self, parameters: Iterable[nn.Parameter], max_norm: float) -> float:
        """The global norm: every stage's squared gradient norms summed over the ranks."""
        if not self.dist.distributed:
            return super().clip_grad_norm(parameters, max_norm)
        params = [p for p in parameters if p.grad is not None]
        squares = torch.zeros((), dtype=torch.float32, device=self.dist.device)
        for param in params:
            assert param.grad is not None
            squares += param.grad.float().pow(2).sum()
        self.dist.all_reduce_sum(squares)
        norm = float(squares.sqrt())
        if math.isfinite(max_norm):
            coefficient = min(max_norm / (norm + 1e-6), 1.0)
            for param in params:
                assert param.grad is not None
                param.grad.mul_(coefficient)
        return norm

    # -- state ---------------------------------------------------------------------------------------

    def _ordered(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` in the whole model's parameter order (any name it does not know last)."""
        rank = {name: i for i, name in enumerate(self._trainable_names)}
        return dict(sorted(values.items(), key=lambda item: rank.get(item[0], len(rank))))

    def adapter_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every stage's trained parameters, gathered by name (every rank must call)."""
        mine = super().adapter_state(model)
        if not self.dist.distributed:
            return mine
        merged: dict[str, torch.Tensor] = {}
        for part in self.dist.all_gather_object(mine):
            merged.update(part)
        return self._ordered(merged)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Every stage's optimiser state, gathered and keyed by parameter name (every rank must call)."""
        mine = super().optimizer_state(model, optimizer)
        if not self.dist.distributed:
            return mine
        parts = self.dist.all_gather_object(mine)
        state: dict[str, Any] = {}
        for part in parts:
            state.update(part["state"])
        groups = []
        for index, group in enumerate(mine["param_groups"]):
            names = [n for part in parts for n in part["param_groups"][index]["params"]]
            groups.append({**group, "params": list(self._ordered(dict.fromkeys(names)))})
        return {"format": mine["format"], "state": self._ordered(state), "param_groups": groups}

    def load_optimizer_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]
    ) -> None:
        """Loads this stage's part of a by-name optimiser state (of any strategy)."""
        if not self.dist.distributed:
            super().load_optimizer_state(model, optimizer, saved)
            return
        by_name = dict(model.named_parameters())
        owned = {n for n, _ in trainable_parameters(model)}
        saved = by_name_state(saved, self._trainable_names)
        for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=False):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        optimizer.state.clear()
        for name, values in saved["state"].items():
            if name in owned:
                param = by_name[name]
                optimizer.state[param] = {k: self._like(param, v) for k, v in values.items()}
