"""Finds text in a parsed record that cannot be trained on (lone surrogates, stray controls); normalises CRLF.

JSON happily carries ``"\\ud800"`` (a lone UTF-16 surrogate, which broken exporters and truncated
UTF-16 produce) and ``"\\u0000"``; neither can be encoded as UTF-8 or meant in training text.
:func:`scan_text` walks every string of a record — values and keys, at any depth — so nothing
downstream (dedupe keys, tokenizer, hashes, reports, event JSON) ever meets such text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

# Lone surrogates, and the C0 controls other than tab (09), newline (0A) and carriage return (0D).
_BAD_CHAR = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f]")
REPLACEMENT = "\ufffd"
# CRLF, and the CR CR LF that converting a file's line ends twice makes: one newline each.
_CRLF = re.compile("\r+\n")
_CONTROL_NAMES = {
    0x00: "NUL",
    0x07: "BEL",
    0x08: "BACKSPACE",
    0x0B: "VERTICAL TAB",
    0x0C: "FORM FEED",
    0x1B: "ESCAPE",
}


@dataclass(frozen=True)
class TextProblem:
    """Bad text in one top-level field of a record.

    Attributes:
        field: the record's top-level key holding the text ("" when the record itself is a string).
        message: where in the field (``messages[1].content``), which character, and how to fix it.
    """

    field: str
    message: str


def describe_char(char: str) -> str:
    """``U+D800 (a lone surrogate)`` or ``U+0000 (NUL, a control character)``."""
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return f"U+{code:04X} (a lone UTF-16 surrogate)"
    name = _CONTROL_NAMES.get(code) or unicodedata.name(char, "") or "control"
    return f"U+{code:04X} ({name}, a control character)"


def _fix_hint(char: str) -> str:
    if 0xD800 <= ord(char) <= 0xDFFF:
        return (
            "text that UTF-8 cannot encode (made by broken exporters or cut UTF-16); re-export the file "
            "as UTF-8 or delete the character"
        )
    return "it cannot be meant in training text (tab, newline and carriage return are fine); delete it"


def has_bad_text(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate or a C0 control other than tab, LF and CR."""
    return _BAD_CHAR.search(text) is not None


def _safe_key(key: str) -> str:
    return key if _BAD_CHAR.search(key) is None else ascii(key)[1:-1]


class _Scan:
    """Walks a JSON value, cleaning strings and noting the first bad place of each top-level field."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[str, str, int]] = {}  # field → (path, bad char, position)
        self.more: dict[str, int] = {}

    def note(self, field: str, path: str, text: str) -> None:
        match = _BAD_CHAR.search(text)
        if match is None:
            return
        if field in self.first:
            self.more[field] = self.more.get(field, 0) + 1
        else:
            self.first[field] = (path, match.group(0), match.start())

    def text(self, value: str, field: str, path: str) -> str:
        self.note(field, path, value)
        return _BAD_CHAR.sub(REPLACEMENT, _CRLF.sub("\n", value))

    def value(self, value: Any, field: str, path: str) -> Any:
        if isinstance(value, str):
            return self.text(value, field, path)
        if isinstance(value, list):
            return [self.value(item, field, f"{path}[{n}]") for n, item in enumerate(value)]
        if isinstance(value, dict):
            cleaned: dict[str, Any] = {}
            for key, item in value.items():
                name = _safe_key(str(key))
                self.note(field, f"{path}.{name}" if path else name, str(key))
                cleaned[_BAD_CHAR.sub(REPLACEMENT, str(key))] = self.value(
                    item, field, f"{path}.{name}" if path else name
                )
            return cleaned
        return value

    def problems(self) -> list[TextProblem]:
        found: list[TextProblem] = []
        for field, (path, char, position) in self.first.items():
            more = self.more.get(field, 0)
            also = f"; {more} more place{'s' if more != 1 else ''} in '{field}' too" if more else ""
            where = f"'{path}'" if path else "the record"
            found.append(
                TextProblem(
                    field,
                    f"{where} contains {describe_char(char)} at character {position + 1}: "
                    f"{_fix_hint(char)}{also}",
                )
            )
        return found


def scan_text(value: Any) -> tuple[Any, list[TextProblem]]:
    """Checks and cleans every string of a parsed JSON record.

    Args:
        value: the parsed record (normally an object).

    Returns:
        The record with every CRLF inside a string turned into LF and every bad character
        replaced by U+FFFD (so the record's other checks can still run and quote it safely),
        and one problem per top-level field that held bad text (empty when all text is clean).
    """
    scan = _Scan()
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            field = _safe_key(str(key))
            scan.note(field, field, str(key))
            cleaned[_BAD_CHAR.sub(REPLACEMENT, str(key))] = scan.value(item, field, field)
        return cleaned, scan.problems()
    return scan.value(value, "", ""), scan.problems()
