"""The shape of a parsed JSON value: its JSON type's name and, for a record, its source format."""

from __future__ import annotations

from typing import Any, Final

DATA_FORMATS: Final = ("auto", "native", "alpaca", "sharegpt", "openai")
SOURCE_FORMATS: Final = ("native", "alpaca", "sharegpt", "openai")
_NATIVE_ONLY_KEYS = frozenset({"thinking", "crypto_terms", "difficulty"})


def _json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def detect_source_format(obj: dict[str, Any]) -> str | None:
    """The shape of one record: ``native``, ``alpaca``, ``sharegpt``, ``openai`` or None.

    ``native`` is alpaca plus at least one of ``thinking``, ``crypto_terms`` or ``difficulty``.
    """
    if "messages" in obj:
        return "openai"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj or "output" in obj:
        return "native" if _NATIVE_ONLY_KEYS.intersection(obj) else "alpaca"
    return None
