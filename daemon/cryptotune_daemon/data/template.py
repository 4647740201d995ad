"""Renders records exactly as the official Qwen3-Thinking-2507 chat template does."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptotune_daemon.data.records import Record

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Native records wrap reasoning in <thinking>…</thinking>; a <think>…</think> wrapper is accepted too.
_THINKING_WRAPPER = re.compile(r"^\s*<(thinking|think)>(.*)</\1>\s*$", re.DOTALL)


@dataclass(frozen=True)
class RenderedSample:
    """A record as training text, split where the loss starts.

    ``prompt`` is masked (up to and including ``<think>\\n``); ``trained`` carries the loss
    (reasoning, ``</think>``, answer and ``<|im_end|>``); ``suffix`` is the newline the
    template writes after ``<|im_end|>``, rendered but neither trained nor tokenised.
    """

    prompt: str
    trained: str
    suffix: str = "\n"

    @property
    def text(self) -> str:
        """The full text, byte-identical to the official chat template's rendering."""
        return self.prompt + self.trained + self.suffix


def extract_reasoning(thinking: str | None) -> str:
    """Returns the reasoning inside an optional ``<thinking>…</thinking>`` (or ``<think>``) wrapper.

    Leading and trailing newlines are stripped, exactly as the official template strips
    ``reasoning_content``.
    """
    if not thinking:
        return ""
    match = _THINKING_WRAPPER.match(thinking)
    inner = match.group(2) if match else thinking
    return inner.strip("\n")


def user_content(instruction: str, input_text: str) -> str:
    """The user turn's content: the instruction, then the input on the next line if any."""
    return f"{instruction}\n{input_text}" if input_text else instruction


def render_prompt(instruction: str, input_text: str = "") -> str:
    """The masked prompt, identical to the template's generation prompt for this user turn."""
    return (
        f"{IM_START}user\n{user_content(instruction, input_text)}{IM_END}\n"
        f"{IM_START}assistant\n{THINK_OPEN}\n"
    )


def render_record(record: Record) -> RenderedSample:
    """Renders one record as a user turn and a final assistant turn with reasoning."""
    trained = f"{record.reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{record.output.lstrip(chr(10))}{IM_END}"
    return RenderedSample(prompt=render_prompt(record.instruction, record.input), trained=trained)
