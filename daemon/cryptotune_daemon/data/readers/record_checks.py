"""Per-field checks of one record (text, control tokens, thinking, terms, difficulty, unsupported fields)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from cryptotune_daemon.data.readers.shapes import _json_type
from cryptotune_daemon.data.template import THINK_CLOSE, THINK_OPEN, extract_reasoning

DIFFICULTY_NAMES: Final = {
    "beginner": 1,
    "intermediate": 2,
    "advanced": 3,
    "expert": 4,
    "初级": 1,
    "中级": 2,
    "高级": 3,
    "专家": 4,
}
# Every token Qwen3 adds on top of its BPE vocabulary. In raw text the tokenizer turns them
# into control tokens, so a record that contains one would corrupt the chat structure.
_CONTROL_TOKENS = re.compile(
    r"<\|(?:endoftext|im_start|im_end|object_ref_start|object_ref_end|box_start|box_end|quad_start|quad_end"
    r"|vision_start|vision_end|vision_pad|image_pad|video_pad|fim_prefix|fim_middle|fim_suffix|fim_pad"
    r"|repo_name|file_sep)\|>|</?tool_call>|</?tool_response>|</?think>"
)
_WRAPPER_OPEN = re.compile(r"^\s*<(thinking|think)>")
_WRAPPERS = (("<thinking>", "</thinking>"), ("<think>", "</think>"))
_MEDIA_KEYS = ("images", "videos", "audios")


class _Invalid(Exception):
    """Raised inside record conversion; each (field, message) of ``problems`` becomes one RecordProblem."""

    def __init__(self, field: str, message: str, *more: tuple[str, str]) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.problems: tuple[tuple[str, str], ...] = ((field, message), *more)


_T = TypeVar("_T")


class _Checks:
    """Checks the independent fields of one record, keeping every failure instead of the first.

    A check raises :class:`_Invalid` at its field's first problem (what follows in the same field
    usually depends on it); :meth:`run` notes the problem and returns a placeholder so the other
    fields are still checked, and :meth:`done` raises one ``_Invalid`` carrying all of them.
    """

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.found.append((field, message))

    def run(self, check: Callable[[], _T], fallback: _T) -> _T:
        """``check()``, or ``fallback`` (with its problems noted) when it raises ``_Invalid``."""
        try:
            return check()
        except _Invalid as exc:
            self.found.extend(exc.problems)
            return fallback

    def done(self) -> None:
        """Raises everything found, in the order the checks ran."""
        if self.found:
            first, *more = self.found
            raise _Invalid(*first, *more)


def _text(value: Any, field: str, *, required: bool) -> str:
    if value is None:
        if required:
            raise _Invalid(field, f"missing required field '{field}'; add it as a non-empty string")
        return ""
    if not isinstance(value, str):
        raise _Invalid(field, f"'{field}' must be a string, got {_json_type(value)}")
    if required and not value.strip():
        raise _Invalid(field, f"'{field}' is empty; give it a non-empty string or remove the record")
    return value


def _check_control_tokens(field: str, text: str, label: str = "") -> None:
    match = _CONTROL_TOKENS.search(text) if "<" in text else None  # every control token starts with '<'
    if match:
        raise _Invalid(
            field,
            f"{label or repr(field)} contains '{match.group(0)}', which the tokenizer reads as a Qwen3 "
            "control token and would break the chat structure; remove it",
        )


def _parse_difficulty(value: Any) -> int | None:
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.lower() in DIFFICULTY_NAMES:
            return DIFFICULTY_NAMES[text.lower()]
        try:
            parsed = float(text)
        except ValueError:
            parsed = math.nan
        if parsed.is_integer():
            number = int(parsed)
    if number is not None and 1 <= number <= 4:
        return number
    shown = json.dumps(value, ensure_ascii=False)
    raise _Invalid(
        "difficulty",
        f"'difficulty' must be an integer 1–4 (or BEGINNER, INTERMEDIATE, ADVANCED, EXPERT), got {shown}",
    )


def _parse_terms(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Invalid("crypto_terms", f"'crypto_terms' must be a list of strings, got {_json_type(value)}")
    terms: list[str] = []
    for position, term in enumerate(value):
        if not isinstance(term, str):
            raise _Invalid(
                "crypto_terms", f"'crypto_terms[{position}]' must be a string, got {_json_type(term)}"
            )
        cleaned = term.strip()
        if cleaned and cleaned not in terms:
            terms.append(cleaned)
    return tuple(terms)


def _wrapped_reasoning(thinking: str) -> str | None:
    """What :func:`extract_reasoning` returns for a trace wholly inside one ``<thinking>`` (or
    ``<think>``) wrapper — the common shape, found without regular expressions; None otherwise."""
    stripped = thinking.strip()  # the same whitespace as the wrapper pattern's \s
    for opening, closing in _WRAPPERS:
        if stripped.startswith(opening) and stripped.endswith(closing):
            return stripped[len(opening) : len(stripped) - len(closing)].strip("\n")
    return None


def _parse_thinking(value: Any) -> tuple[str, bool]:
    if type(value) is str:
        reasoning = _wrapped_reasoning(value)
        if reasoning is not None:
            _check_control_tokens("thinking", reasoning)
            return reasoning, bool(reasoning.strip())
    thinking = _text(value, "thinking", required=False)
    opened = _WRAPPER_OPEN.match(thinking)
    if opened and f"</{opened.group(1)}>" not in thinking:
        raise _Invalid(
            "thinking", f"'thinking' opens <{opened.group(1)}> but never closes it; add the closing tag"
        )
    reasoning = extract_reasoning(thinking)
    _check_control_tokens("thinking", reasoning)
    return reasoning, bool(reasoning.strip())


def _check_media(obj: dict[str, Any], checks: _Checks) -> None:
    for key in _MEDIA_KEYS:
        if obj.get(key):
            checks.add(key, f"'{key}' is not supported: cryptotune trains text-only models; remove the field")


def _is_empty_tools(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() in ("", "[]", "null")
    return isinstance(value, list | dict) and not value


def _check_tools(value: Any) -> None:
    if not _is_empty_tools(value):
        raise _Invalid(
            "tools",
            "tool definitions are not supported: the trainer renders no tool system prompt; remove 'tools'",
        )


def _check_system(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _Invalid("system", f"{where} must be a string, got {_json_type(value)}")
    if value.strip():
        raise _Invalid(
            "system",
            f"{where} is not supported: the trainer renders no system turn, so the model would be trained "
            "without it; remove it or move its text into the question",
        )


def _check_history(value: Any) -> None:
    if value not in (None, "", []):
        raise _Invalid("history", "multi-turn history is not supported; flatten it into instruction/input")


def _split_think(content: str, field: str, where: str) -> tuple[str, str, bool]:
    """(reasoning, answer, has_thinking) from a reply with an optional leading think block.

    Mirrors the official template: reasoning is the text between the last ``<think>`` and the first
    ``</think>``, the answer everything after the last ``</think>``.
    """
    if THINK_CLOSE not in content:
        if THINK_OPEN in content:
            raise _Invalid(
                field, f"{where} opens <think> but never closes it; add </think> after the reasoning"
            )
        return "", content, False
    reasoning = content.split(THINK_CLOSE, 1)[0].rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
    answer = content.rsplit(THINK_CLOSE, 1)[-1].lstrip("\n")
    return reasoning.strip("\n"), answer, bool(reasoning.strip())


def _checked_text(obj: dict[str, Any], field: str, *, required: bool) -> str:
    text = _text(obj.get(field), field, required=required)
    _check_control_tokens(field, text)
    return text
