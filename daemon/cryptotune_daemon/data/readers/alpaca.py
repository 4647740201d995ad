"""Converts an alpaca record {instruction, input, output} (native: plus thinking, terms, difficulty)."""

from __future__ import annotations

from typing import Any

from cryptotune_daemon.data.readers.record_checks import (
    _MEDIA_KEYS,
    _check_history,
    _check_media,
    _check_system,
    _checked_text,
    _Checks,
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


def _from_alpaca(obj: dict[str, Any], index: int, line: int) -> Record:
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
        extra={key: value for key, value in obj.items() if key not in _ALPACA_KEYS},
    )
