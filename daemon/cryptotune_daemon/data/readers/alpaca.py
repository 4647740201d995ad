"""Converts an alpaca record {instruction, input, output} (native: plus thinking, terms, difficulty)."""

from __future__ import annotations

import contextlib
from typing import Any

from cryptotune_daemon.data.readers.record_checks import (
    _MEDIA_KEYS,
    _check_history,
    _check_media,
    _check_system,
    _checked_text,
    _Checks,
    _Invalid,
    _parse_difficulty,
    _parse_terms,
    _parse_thinking,
)
from cryptotune_daemon.data.records import Record

_ALPACA_KEYS = frozenset(
    {
        "instruction",
        "input",
        "output",
        "thinking",
        "crypto_terms",
        "difficulty",
        "system",
        "history",
        *_MEDIA_KEYS,
    }
)
_MEDIA_KEY_SET = frozenset(_MEDIA_KEYS)


def _from_alpaca(obj: dict[str, Any], index: int, line: int) -> Record:
    with contextlib.suppress(_Invalid):
        return _from_valid_alpaca(obj, index, line)
    # Something is wrong: check every field again, listing each one's problem.
    checks = _Checks()
    _check_media(obj, checks)
    instruction = checks.run(lambda: _checked_text(obj, "instruction", required=True), "")
    input_text = checks.run(lambda: _checked_text(obj, "input", required=False), "")
    output = checks.run(lambda: _checked_text(obj, "output", required=True), "")
    reasoning, has_thinking = checks.run(lambda: _parse_thinking(obj.get("thinking")), ("", False))
    no_terms: tuple[str, ...] = ()
    terms = checks.run(lambda: _parse_terms(obj.get("crypto_terms")), no_terms)
    difficulty = checks.run(lambda: _parse_difficulty(obj.get("difficulty")), None)
    checks.run(lambda: _check_system(obj.get("system"), "'system'"), None)
    checks.run(lambda: _check_history(obj.get("history")), None)
    checks.done()
    return _record(
        obj, index, line, instruction, input_text, output, reasoning, has_thinking, terms, difficulty
    )


def _from_valid_alpaca(obj: dict[str, Any], index: int, line: int) -> Record:
    """The record when every field is fine (the common case: plain text checked inline, nothing
    collected); raises :class:`_Invalid` at the first problem, after which :func:`_from_alpaca`
    lists them all. Text that may hold a control token (a ``<``) gets the full check."""
    get = obj.get
    if not _MEDIA_KEY_SET.isdisjoint(obj):
        for key in _MEDIA_KEYS:
            if get(key):
                raise _Invalid(key, "unsupported")
    instruction = get("instruction")
    if type(instruction) is not str or "<" in instruction or not instruction.strip():
        instruction = _checked_text(obj, "instruction", required=True)
    input_text = get("input")
    if input_text is None:
        input_text = ""
    elif type(input_text) is not str or "<" in input_text:
        input_text = _checked_text(obj, "input", required=False)
    output = get("output")
    if type(output) is not str or "<" in output or not output.strip():
        output = _checked_text(obj, "output", required=True)
    reasoning, has_thinking = _parse_thinking(get("thinking"))
    terms = _parse_terms(get("crypto_terms"))
    difficulty = get("difficulty")
    if type(difficulty) is not int or not 1 <= difficulty <= 4:
        difficulty = _parse_difficulty(difficulty)
    if get("system") is not None:
        _check_system(get("system"), "'system'")
    if get("history") is not None:
        _check_history(get("history"))
    return _record(
        obj, index, line, instruction, input_text, output, reasoning, has_thinking, terms, difficulty
    )


def _record(
    obj: dict[str, Any],
    index: int,
    line: int,
    instruction: str,
    input_text: str,
    output: str,
    reasoning: str,
    has_thinking: bool,
    terms: tuple[str, ...],
    difficulty: int | None,
) -> Record:
    extra = {} if _ALPACA_KEYS.issuperset(obj) else {k: v for k, v in obj.items() if k not in _ALPACA_KEYS}
    return Record(
        index=index,
        line=line,
        instruction=instruction,
        input=input_text,
        output=output,
        reasoning=reasoning,
        has_thinking=has_thinking,
        crypto_terms=terms,
        difficulty=difficulty,
        extra=extra,
    )
