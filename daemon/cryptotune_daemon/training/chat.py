"""Chat with a job's model: the base model plus its adapter, prompts rendered with the official template,
decoded pieces streamed as they are generated, reasoning and answer told apart at ``</think>``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from cryptotune_daemon.data.template import THINK_CLOSE
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.model_request import (
    CHANNEL_ANSWER,
    CHANNEL_REASONING,
    MODEL_BASE,
    MODEL_TUNED,
    GenerateParams,
    ModelRequest,
)
from cryptotune_daemon.training.models import load_base_model, resolve_model
from cryptotune_daemon.training.trainer import precision_dtype

END_OF_TURN = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
_REPLACEMENT = "\ufffd"  # a multi-byte character cut in the middle by a token boundary

# (model, channel, text) of one decoded piece.
PieceSink = Callable[[str, str, str], None]


@dataclass(frozen=True)
class Turn:
    """One generated answer.

    Attributes:
        model: ``tuned`` or ``base``.
        reasoning: the text before ``</think>`` (stripped of surrounding newlines).
        answer: the text after it (stripped likewise; empty when the reasoning never closed).
        prompt_tokens: tokens of the rendered prompt.
        generated_tokens: tokens generated.
        finish_reason: ``stop`` (end of turn), ``length`` (max_new_tokens) or ``cancelled``.
    """

    model: str
    reasoning: str
    answer: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str


class ChannelSplitter:
    """Turns generated token ids into decoded pieces, switching from reasoning to answer at ``</think>``.

    The generation prompt ends with ``<think>\\n``, so the model emits only the reasoning, ``</think>``
    and the answer. A piece is released only when it decodes to whole characters.
    """

    def __init__(self, decode: Callable[[list[int]], str], think_close_id: int, stop_ids: set[int]) -> None:
        self._decode = decode
        self._think_close = think_close_id
        self._stop_ids = stop_ids
        self.channel = CHANNEL_REASONING
        self._ids: list[int] = []
        self._sent = 0
        self.text = {CHANNEL_REASONING: "", CHANNEL_ANSWER: ""}

    def feed(self, token_id: int) -> list[tuple[str, str]]:
        """The (channel, text) pieces that ``token_id`` completes."""
        if token_id in self._stop_ids:
            return []
        if token_id == self._think_close and self.channel == CHANNEL_REASONING:
            pieces = self.flush()
            self.channel = CHANNEL_ANSWER
            self._ids, self._sent = [], 0
            return pieces
        self._ids.append(token_id)
        decoded = self._decode(self._ids)
        if decoded.endswith(_REPLACEMENT):
            return []
        return self._release(decoded)

    def flush(self) -> list[tuple[str, str]]:
        """Whatever is left undecided (at the end, or at ``</think>``)."""
        return self._release(self._decode(self._ids)) if self._ids else []

    def _release(self, decoded: str) -> list[tuple[str, str]]:
        new = decoded[self._sent :]
        self._sent = len(decoded)
        if not new:
            return []
        self.text[self.channel] += new
        return [(self.channel, new)]

    def parts(self) -> tuple[str, str]:
        """(reasoning, answer), as the template writes them: without their surrounding newlines."""
        return self.text[CHANNEL_REASONING].strip("\n"), self.text[CHANNEL_ANSWER].strip("\n")


def render_chat(tokenizer: Any, messages: tuple[tuple[str, str], ...]) -> str:
    """The prompt, rendered by the official Qwen3-Thinking-2507 template (ends with ``<think>\\n``).

    Earlier assistant turns carry only their answer: the template drops their reasoning, as the
    model card says.
    """
    from cryptotune_daemon.data.tokenizer import chat_template

    if not messages or messages[-1][0] != "user":
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, "the conversation must end with a user turn")
    conversation = [{"role": role, "content": content} for role, content in messages]
    text = tokenizer.apply_chat_template(
        conversation, chat_template=chat_template(), add_generation_prompt=True, tokenize=False
    )
    return str(text)


def model_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype chat runs in: the training precision on a GPU, fp32 on the CPU."""
    return precision_dtype(precision) if device.type == "cuda" else torch.float32


def context_length(model: Any) -> int:
    """The model's context window (``max_position_embeddings``)."""
    return int(getattr(model.config, "max_position_embeddings", 0) or 32768)


class _Cancelled(Exception):
    pass


class ChatModel:
    """A job's base model with its adapter, loaded once and used for many turns."""

    def __init__(self, request: ModelRequest) -> None:
        import peft
        from transformers import AutoTokenizer

        device = torch.device("cuda:0" if request.device == "cuda" else "cpu")
        source = resolve_model(
            request.model_name,
            trust_remote_code=request.trust_remote_code,
            allow_remote_code=request.trust_remote_code,
            revision=request.revision,
        )
        base = load_base_model(source, dtype=model_dtype(request.precision, device), device=device)
        self.model: Any = peft.PeftModel.from_pretrained(base, str(request.adapter_dir))
        self.model.eval()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(request.adapter_dir), local_files_only=True)
        self.device = device
        convert: Any = self.tokenizer.convert_tokens_to_ids
        ids: list[Any] = list(convert([THINK_CLOSE, END_OF_TURN, END_OF_TEXT]))
        self._think_close, *stops = (int(i) for i in ids)
        self._stop_ids = set(stops)

    def prompt_ids(self, params: GenerateParams) -> list[int]:
        """The rendered prompt's token ids.

        Raises:
            CryptotuneError: REQUEST_INVALID when the prompt, with room for the answer, exceeds the context.
        """
        ids = list(
            self.tokenizer(render_chat(self.tokenizer, params.messages), add_special_tokens=False)[
                "input_ids"
            ]
        )
        context = context_length(self.model)
        if len(ids) + params.max_new_tokens > context:
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID,
                f"the prompt is {len(ids)} tokens; with --max-new-tokens {params.max_new_tokens} it "
                f"exceeds the model's context of {context} tokens: shorten the conversation or lower "
                "--max-new-tokens",
            )
        return ids

    def turns(self, params: GenerateParams, emit: PieceSink, cancelled: threading.Event) -> Iterator[Turn]:
        """The tuned answer (and with ``compare`` the base model's), streaming pieces to ``emit``."""
        prompt = self.prompt_ids(params)
        yield self._generate(prompt, params, MODEL_TUNED, emit, cancelled)
        if params.compare and not cancelled.is_set():
            with self.model.disable_adapter():
                yield self._generate(prompt, params, MODEL_BASE, emit, cancelled)

    @torch.no_grad()
    def _generate(
        self,
        prompt: list[int],
        params: GenerateParams,
        which: str,
        emit: PieceSink,
        cancelled: threading.Event,
    ) -> Turn:
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        splitter = ChannelSplitter(
            lambda ids: str(self.tokenizer.decode(ids, skip_special_tokens=False)),
            self._think_close,
            self._stop_ids,
        )
        generated: list[int] = []

        class Streamer(BaseStreamer):
            first = True

            def put(self, value: torch.Tensor) -> None:
                if self.first:  # generate() hands over the prompt first
                    self.first = False
                    return
                for token in value.reshape(-1).tolist():
                    generated.append(int(token))
                    for channel, text in splitter.feed(int(token)):
                        emit(which, channel, text)

            def end(self) -> None:
                for channel, text in splitter.flush():
                    emit(which, channel, text)

        class StopWhenCancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full(
                    (input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device
                )

        greedy = params.temperature <= 0
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if greedy
            else {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
            }
        )
        config_cls: Any = GenerationConfig  # its __init__ is untyped
        config = config_cls(
            max_new_tokens=params.max_new_tokens,
            eos_token_id=sorted(self._stop_ids),
            pad_token_id=min(self._stop_ids),
            use_cache=True,
            **sampling,
        )
        input_ids = torch.tensor([prompt], device=self.device)
        seeded = contextlib.nullcontext() if params.seed is None else _seeded(params.seed, self.device)
        with seeded:
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                streamer=Streamer(),
                stopping_criteria=StoppingCriteriaList([StopWhenCancelled()]),
            )
        if cancelled.is_set():
            finish = "cancelled"
        elif generated and generated[-1] in self._stop_ids:
            finish = "stop"
        else:
            finish = "length"
        reasoning, answer = splitter.parts()
        return Turn(which, reasoning, answer, len(prompt), len(generated), finish)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
