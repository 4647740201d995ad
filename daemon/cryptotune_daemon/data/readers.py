"""Streams training records out of JSON / JSON Lines files in the native, alpaca, sharegpt or openai shape."""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

from cryptotune_daemon.data.records import Record, RecordProblem
from cryptotune_daemon.data.template import THINK_CLOSE, THINK_OPEN, extract_reasoning
from cryptotune_daemon.data.text_checks import scan_text
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

FILE_FORMATS: Final = ("json", "jsonl")
DATA_FORMATS: Final = ("auto", "native", "alpaca", "sharegpt", "openai")
SOURCE_FORMATS: Final = ("native", "alpaca", "sharegpt", "openai")

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

_CHUNK_BYTES = 1 << 20
# A single record larger than this is certainly not a Q&A sample; refusing it bounds the
# buffer the streaming parser may need (it never holds more than one pending element).
MAX_RECORD_CHARS: Final = 64 << 20
_WHITESPACE = " \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"

# Every token Qwen3 adds on top of its BPE vocabulary. In raw text the tokenizer turns them
# into control tokens, so a record that contains one would corrupt the chat structure.
_CONTROL_TOKENS = re.compile(
    r"<\|(?:endoftext|im_start|im_end|object_ref_start|object_ref_end|box_start|box_end|quad_start|quad_end"
    r"|vision_start|vision_end|vision_pad|image_pad|video_pad|fim_prefix|fim_middle|fim_suffix|fim_pad"
    r"|repo_name|file_sep)\|>|</?tool_call>|</?tool_response>|</?think>"
)
_WRAPPER_OPEN = re.compile(r"^\s*<(thinking|think)>")

_MEDIA_KEYS = ("images", "videos", "audios")
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
_NATIVE_ONLY_KEYS = frozenset({"thinking", "crypto_terms", "difficulty"})
_SHAREGPT_KEYS = frozenset({"conversations", "tools", "system", *_MEDIA_KEYS})
_OPENAI_KEYS = frozenset({"messages", "tools", *_MEDIA_KEYS})

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "tool_call",
    "observation": "tool",
    "tool": "tool",
}
_OPENAI_ROLES = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


@dataclass(frozen=True)
class RawRecord:
    """One record slot of a file before conversion: a parsed JSON value or why it did not parse.

    Attributes:
        index: 0-based position of the record in its file.
        line: 1-based line where the record starts.
        value: the parsed JSON value (None when ``error`` is set).
        error: why the record could not be parsed as JSON ("" when it parsed).
    """

    index: int
    line: int
    value: Any
    error: str = ""


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


def _data_error(display_name: str, message: str) -> CryptotuneError:
    return CryptotuneError(ErrorCode.DATA_INVALID, f"{display_name}: {message}")


# ---------------------------------------------------------------------------------------------
# Decoding


class _TextSource:
    """Decodes a file as UTF-8 chunk by chunk, so errors can name the exact byte offset and line."""

    def __init__(self, handle: BinaryIO, display_name: str) -> None:
        self._handle = handle
        self._name = display_name
        self._pending = b""  # bytes of a character split across chunks
        self._offset = 0  # file offset of the first byte of ``_pending``
        self._newlines = 0  # newlines in the bytes before ``_offset``
        self._first = True
        self.eof = False

    def read(self) -> str:
        """The next decoded chunk ("" once the file is exhausted)."""
        while not self.eof:
            # The first read is large enough to see a byte-order mark and sniff the encoding.
            raw = self._handle.read(max(_CHUNK_BYTES, 4096) if self._first else _CHUNK_BYTES)
            final = not raw
            data = self._pending + raw
            if self._first:
                self._first = False
                data = self._check_start(data)
            try:
                text, used = codecs.utf_8_decode(data, "strict", final)
            except UnicodeDecodeError as exc:
                raise self._decode_error(data, exc.start) from None
            self._offset += used
            self._newlines += data.count(b"\n", 0, used)
            self._pending = data[used:]
            self.eof = final
            if text:
                return text
        return ""

    def _check_start(self, data: bytes) -> bytes:
        if data.startswith(_UTF8_BOM):
            self._offset = len(_UTF8_BOM)
            return data[len(_UTF8_BOM) :]
        if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:4096]:
            # UTF-16/32 text is mostly valid UTF-8 byte by byte (ASCII plus NULs), so it would
            # otherwise surface as a confusing JSON syntax error.
            raise _data_error(
                self._name,
                "the file looks like UTF-16 or UTF-32 (it has NUL bytes or a UTF-16 byte-order mark); "
                "re-encode it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8`",
            )
        return data

    def _decode_error(self, data: bytes, start: int) -> CryptotuneError:
        offset = self._offset + start
        line = self._newlines + data.count(b"\n", 0, start) + 1
        hint = ""
        if _looks_like_gb18030(data, start):
            hint = (
                " It looks like GBK/GB18030 (common for Chinese text): "
                "convert it with `iconv -f GB18030 -t UTF-8`."
            )
        return _data_error(
            self._name,
            f"line {line} (byte offset {offset}) is not valid UTF-8; re-encode the file as UTF-8.{hint}",
        )


def _looks_like_gb18030(data: bytes, start: int) -> bool:
    """Whether the line around an undecodable byte reads as Chinese text in GB18030."""
    begin = data.rfind(b"\n", 0, start) + 1
    end = data.find(b"\n", start)
    end = min(len(data) if end < 0 else end, start + 4096)
    # The window may end inside a two-byte character: retry one byte shorter.
    for stop in (end, end - 1):
        try:
            text = data[begin:stop].decode("gb18030")
        except UnicodeDecodeError:
            continue
        return any("\u4e00" <= char <= "\u9fff" for char in text)
    return False


# ---------------------------------------------------------------------------------------------
# JSON array / JSON Lines scanning


class _Scanner:
    """A sliding window over decoded text that tracks the line and column of its read position."""

    def __init__(self, source: _TextSource) -> None:
        self.source = source
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.base = 0  # text offset of ``buf[0]`` in the file
        self.line_start = 0  # text offset where the line holding ``pos`` starts

    def fill(self) -> bool:
        """Appends the next chunk; False at end of file."""
        if self.pos > _CHUNK_BYTES:
            # Drop consumed text so the window holds at most one chunk plus one pending element.
            self.buf = self.buf[self.pos :]
            self.base += self.pos
            self.pos = 0
        chunk = self.source.read()
        self.buf += chunk
        return bool(chunk)

    def advance(self, end: int) -> None:
        """Moves the read position to ``end``, counting the newlines passed."""
        passed = self.buf.count("\n", self.pos, end)
        if passed:
            self.line += passed
            self.line_start = self.base + self.buf.rfind("\n", self.pos, end) + 1
        self.pos = end

    def peek(self) -> str:
        """The next non-whitespace character ("" at end of file), skipping whitespace."""
        while True:
            end = self.pos
            while end < len(self.buf) and self.buf[end] in _WHITESPACE:
                end += 1
            self.advance(end)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def where(self, pos: int) -> str:
        """Line and column of a position at or after the read position, for messages."""
        newline = self.buf.rfind("\n", self.pos, pos)
        start = self.line_start if newline < 0 else self.base + newline + 1
        line = self.line + self.buf.count("\n", self.pos, pos)
        return f"line {line}, column {self.base + pos - start + 1}"


_DECODER = json.JSONDecoder()
# Messages json raises when the text simply stops early; with more input the value may be fine.
_TRUNCATION_MESSAGES = ("Unterminated string", "Invalid \\uXXXX escape", "Invalid \\escape")
_TOKEN_TAIL = 16


def _decode_value(scanner: _Scanner, display_name: str, what: str) -> Any:
    """Decodes the JSON value at the scanner's position, reading more text as needed.

    No installed library streams JSON with line numbers, so arrays are split by hand:
    ``raw_decode`` parses one element at a time from a window that grows only while the
    element is incomplete (geometrically, so a large element costs linear time).
    """
    want = 0
    while True:
        pending = len(scanner.buf) - scanner.pos
        if not scanner.source.eof and pending < want and scanner.fill():
            continue
        try:
            value, end = _DECODER.raw_decode(scanner.buf, scanner.pos)
        except json.JSONDecodeError as exc:
            # An error near the end of the window may just be a token cut in half ("nu", "1e+").
            near_end = exc.pos >= len(scanner.buf) - _TOKEN_TAIL
            truncated = near_end or exc.msg.startswith(_TRUNCATION_MESSAGES)
            if not scanner.source.eof and truncated and pending < MAX_RECORD_CHARS:
                want = max(2 * pending, _CHUNK_BYTES)
                scanner.fill()
                continue
            if pending >= MAX_RECORD_CHARS:
                raise _data_error(
                    display_name,
                    f"{what} at line {scanner.line} is larger than {MAX_RECORD_CHARS >> 20} MiB "
                    "or never ends; check the file is complete",
                ) from None
            raise _data_error(
                display_name, f"not valid JSON at {scanner.where(exc.pos)}: {exc.msg}"
            ) from None
        # A number or literal touching the end of the window might continue in the next chunk.
        if end >= len(scanner.buf) and not scanner.source.eof:
            want = pending + 1
            scanner.fill()
            continue
        scanner.advance(end)
        return value


def _top_level_hint(value: Any) -> str:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, list) and item and isinstance(item[0], dict):
                return f" The records seem to be under the key '{key}': put that array at the top level."
    return ""


def _iter_json(source: _TextSource, display_name: str) -> Iterator[RawRecord]:
    scanner = _Scanner(source)
    first = scanner.peek()
    if not first:
        raise _data_error(display_name, "the file is empty; expected a JSON array of records or JSON Lines")
    if first != "[":
        line = scanner.line
        value = _decode_value(scanner, display_name, "the top-level value")
        if not isinstance(value, dict):
            raise _data_error(
                display_name,
                f"the top level (line {line}) is {_json_type(value)}; expected an array of record objects "
                "or JSON Lines with one object per line",
            )
        if detect_source_format(value) is None:
            keys = ", ".join(sorted(value)[:8])
            raise _data_error(
                display_name,
                f"the top-level JSON object (line {line}) is not a record (keys: {keys}); expected an array "
                f"of records or JSON Lines with one object per line.{_top_level_hint(value)}",
            )
        after = scanner.peek()
        if after:
            raise _data_error(
                display_name,
                f"unexpected data at line {scanner.line} after the top-level object: put the records in a "
                "JSON array [ … ] or write one object per line (JSON Lines)",
            )
        yield RawRecord(index=0, line=line, value=value)
        return
    scanner.advance(scanner.pos + 1)
    index = 0
    while True:
        char = scanner.peek()
        if char == "]" and index == 0:
            scanner.advance(scanner.pos + 1)
            break
        if not char:
            raise _data_error(
                display_name, f"the JSON array is not closed: the file ends at line {scanner.line}"
            )
        line = scanner.line
        value = _decode_value(scanner, display_name, f"array element {index}")
        yield RawRecord(index=index, line=line, value=value)
        index += 1
        char = scanner.peek()
        if char == ",":
            scanner.advance(scanner.pos + 1)
            if scanner.peek() == "]":
                raise _data_error(
                    display_name,
                    f"trailing comma before ']' at line {scanner.line}: JSON does not allow one; remove it",
                )
            continue
        if char == "]":
            scanner.advance(scanner.pos + 1)
            break
        if not char:
            raise _data_error(
                display_name, f"the JSON array is not closed: the file ends at line {scanner.line}"
            )
        raise _data_error(
            display_name,
            f"not valid JSON at {scanner.where(scanner.pos)}: "
            f"expected ',' or ']' after array element {index - 1}",
        )
    if scanner.peek():
        raise _data_error(
            display_name,
            f"unexpected data at line {scanner.line} after the top-level array; if this is JSON Lines, "
            "use format 'jsonl'",
        )
    if index == 0:
        raise _data_error(display_name, "no records: the top-level array is empty")


def _iter_lines(source: _TextSource, display_name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line ending) for every physical line."""
    pending = ""
    number = 0
    while True:
        chunk = source.read()
        if not chunk:
            break
        pending += chunk
        if "\n" not in chunk:
            if len(pending) > MAX_RECORD_CHARS:
                raise _data_error(
                    display_name,
                    f"line {number + 1} is longer than {MAX_RECORD_CHARS >> 20} MiB; if the file is one "
                    "JSON array, use format 'json'",
                )
            continue
        lines = pending.split("\n")
        pending = lines.pop()
        for text in lines:
            number += 1
            yield number, text.removesuffix("\r")
    if pending:
        yield number + 1, pending.removesuffix("\r")


def _iter_jsonl(source: _TextSource, display_name: str) -> Iterator[RawRecord]:
    index = 0
    for line, text in _iter_lines(source, display_name):
        stripped = text.strip()
        if not stripped:
            continue
        if len(stripped) > MAX_RECORD_CHARS:
            raise _data_error(display_name, f"line {line} is longer than {MAX_RECORD_CHARS >> 20} MiB")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if index == 0 and not stripped.startswith("{"):
                # The very first line is not even meant to be a record: the file is not JSON Lines.
                raise _data_error(
                    display_name,
                    f"not JSON or JSON Lines: line {line}, column {exc.colno}: {exc.msg}",
                ) from None
            yield RawRecord(
                index=index,
                line=line,
                value=None,
                error=f"the line is not valid JSON (column {exc.colno}: {exc.msg}); each line must hold "
                "exactly one JSON object",
            )
            index += 1
            continue
        if index == 0 and not isinstance(value, dict):
            raise _data_error(
                display_name,
                f"the top level (line {line}) is {_json_type(value)}; expected an array of record objects "
                "or JSON Lines with one object per line",
            )
        if index == 0 and detect_source_format(value) is None and _top_level_hint(value):
            raise _data_error(
                display_name,
                f"the JSON object on line {line} is not a record.{_top_level_hint(value)}",
            )
        yield RawRecord(index=index, line=line, value=value)
        index += 1
    if index == 0:
        raise _data_error(display_name, "the file is empty; expected a JSON array of records or JSON Lines")


def _sniff(source: _TextSource) -> tuple[str, str]:
    """The first non-whitespace character and the text read to find it.

    When that character is ``{`` the text extends to the end of its line (within the record
    size limit), so the caller can tell JSON Lines from a pretty-printed object.
    """
    text = ""
    while True:
        chunk = source.read()
        text += chunk
        stripped = text.lstrip(_WHITESPACE)
        if stripped and (stripped[0] != "{" or "\n" in stripped or len(text) > MAX_RECORD_CHARS):
            return text, stripped[0]
        if not chunk:
            return text, stripped[:1]


def _check_file_format(file_format: str | None) -> None:
    if file_format not in (None, "", *FILE_FORMATS):
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"file format must be 'json' or 'jsonl', got '{file_format}'"
        )


def detect_file_format(path: Path, *, display_name: str, file_format: str | None = None) -> str:
    """Returns the file format :func:`iter_raw_records` reads ``path`` as.

    Args:
        path: the data file.
        display_name: the name used in error messages (never a storage path).
        file_format: ``"json"`` or ``"jsonl"`` to force a format; None (or "") to auto-detect.

    Returns:
        ``"json"`` when the first non-whitespace character is ``[`` (or a single object spans
        several lines), ``"jsonl"`` otherwise.

    Raises:
        CryptotuneError: DATA_INVALID when the file cannot be read as UTF-8 text.
    """
    _check_file_format(file_format)
    if file_format:
        return file_format
    with path.open("rb") as handle:
        source = _TextSource(handle, display_name)
        head, first = _sniff(source)
        if first == "[":
            return "json"
        if first != "{":
            return "jsonl"
        start = len(head) - len(head.lstrip(_WHITESPACE))
        newline = head.find("\n", start)
        first_line = head[start:] if newline < 0 else head[start:newline]
        try:
            json.loads(first_line)
        except json.JSONDecodeError:
            # Either a broken first record (JSON Lines) or one pretty-printed object (JSON).
            scanner = _Scanner(source)
            scanner.buf = head
            scanner.advance(start)
            try:
                _decode_value(scanner, display_name, "the first value")
            except CryptotuneError:
                return "jsonl"
            return "json" if scanner.line > 1 + head.count("\n", 0, start) else "jsonl"
        return "jsonl"


def iter_raw_records(path: Path, *, display_name: str, file_format: str | None = None) -> Iterator[RawRecord]:
    """Streams the record slots of a JSON array or JSON Lines file in constant memory.

    Args:
        path: the data file (UTF-8, with or without BOM; LF or CRLF line endings).
        display_name: the name used in error messages (never a storage path).
        file_format: ``"json"`` or ``"jsonl"`` to force a format; None (or "") to auto-detect.

    Yields:
        One RawRecord per array element or non-blank line, in file order. A JSON Lines line
        that is not valid JSON is yielded with ``error`` set; reading continues.

    Raises:
        CryptotuneError: DATA_INVALID for whole-file problems (not UTF-8, empty, not JSON,
            a top level that is neither an array nor records, no records at all).
    """
    resolved = detect_file_format(path, display_name=display_name, file_format=file_format)
    with path.open("rb") as handle:
        source = _TextSource(handle, display_name)
        if resolved == "json":
            yield from _iter_json(source, display_name)
        else:
            yield from _iter_jsonl(source, display_name)


# ---------------------------------------------------------------------------------------------
# Record conversion


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
    match = _CONTROL_TOKENS.search(text)
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


def _parse_thinking(value: Any) -> tuple[str, bool]:
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


def _turn_text(value: Any, field: str, where: str, *, allow_parts: bool) -> str:
    if isinstance(value, str):
        return value
    if allow_parts and isinstance(value, list):
        # OpenAI content parts: only text parts can be trained.
        texts: list[str] = []
        for part in value:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else _json_type(part)
                raise _Invalid(
                    field, f"{where} has a content part of type '{kind}': only text parts are supported"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise _Invalid(field, f"{where} must have string content, got {_json_type(value)}")


def _pair(
    roles: list[tuple[int, str, str]], field: str, noun: str, user: str, assistant: str
) -> tuple[str, str]:
    """Checks the turns are exactly one user turn then one assistant turn; returns their texts."""
    if not roles:
        raise _Invalid(
            field,
            f"the record has no {noun}s: expected one '{user}' {noun} followed by one '{assistant}' {noun}",
        )
    first_number, first_role, _ = roles[0]
    if first_role != "user":
        raise _Invalid(
            field,
            f"{noun} {first_number} has role '{assistant}': "
            f"the conversation must start with a '{user}' {noun}",
        )
    if len(roles) == 1:
        raise _Invalid(
            field, f"the record has only a '{user}' {noun}: add the '{assistant}' {noun} that answers it"
        )
    if len(roles) > 2:
        questions = sum(1 for _, role, _ in roles if role == "user")
        raise _Invalid(
            field,
            f"the record has {len(roles)} {noun}s ({questions} questions): multi-turn conversations are not "
            f"supported; split it into records of one '{user}' {noun} and one '{assistant}' {noun}",
        )
    second_number, second_role, _ = roles[1]
    if second_role != "assistant":
        raise _Invalid(
            field, f"{noun} {second_number} has role '{user}': expected the '{assistant}' {noun} answering it"
        )
    return roles[0][2], roles[1][2]


def _sharegpt_pair(conversations: Any, checks: _Checks) -> tuple[str, str]:
    """The question and reply of a conversation; raises at its first structural problem.

    A problem with a leading system turn's text goes to ``checks`` and the rest is still checked.
    """
    if conversations is None:
        raise _Invalid(
            "conversations", "missing required field 'conversations' (a list of {from, value} turns)"
        )
    if not isinstance(conversations, list):
        raise _Invalid(
            "conversations",
            f"'conversations' must be a list of {{from, value}} turns, got {_json_type(conversations)}",
        )
    turns: list[tuple[int, str, str]] = []
    for number, turn in enumerate(conversations, start=1):
        if not isinstance(turn, dict):
            raise _Invalid(
                "conversations",
                f"turn {number} is {_json_type(turn)}; expected an object with 'from' and 'value'",
            )
        raw_role = turn.get("from", turn.get("role"))
        if not isinstance(raw_role, str):
            raise _Invalid("conversations", f"turn {number} has no 'from' role string")
        role = _SHAREGPT_ROLES.get(raw_role)
        if role is None:
            raise _Invalid(
                "conversations",
                f"turn {number} has unknown role '{raw_role}' "
                "(expected human, gpt, system, function_call or observation)",
            )
        if role in ("tool_call", "tool"):
            raise _Invalid(
                "conversations",
                f"turn {number} has role '{raw_role}': tool calls are not supported; "
                "keep only records made of one 'human' turn and one 'gpt' turn",
            )
        text = _turn_text(
            turn.get("value", turn.get("content")), "conversations", f"turn {number}", allow_parts=False
        )
        if role == "system":
            if number != 1:
                raise _Invalid(
                    "conversations", f"turn {number} has role 'system': only a leading system turn is allowed"
                )
            checks.run(partial(_check_system, text, "a system turn"), None)
            continue
        turns.append((number, role, text))
    return _pair(turns, "conversations", "turn", "human", "gpt")


def _from_sharegpt(obj: dict[str, Any], index: int, line: int) -> Record:
    checks = _Checks()
    _check_media(obj, checks)
    pair = checks.run(lambda: _sharegpt_pair(obj.get("conversations"), checks), None)
    content = _qa_content(pair, "conversations", checks, reasoning=None)
    checks.run(lambda: _check_tools(obj.get("tools")), None)
    checks.run(lambda: _check_system(obj.get("system"), "'system'"), None)
    checks.done()
    return _qa_record(obj, index, line, content, _SHAREGPT_KEYS)


def _openai_pair(messages: Any, checks: _Checks) -> tuple[tuple[str, str], str | None]:
    """The question and reply of a message list, and the reply's reasoning_content (None when absent).

    Raises at the first structural problem; problems with a leading system message's text or
    with reasoning_content go to ``checks`` and the rest is still checked.
    """
    if messages is None:
        raise _Invalid("messages", "missing required field 'messages' (a list of {role, content} messages)")
    if not isinstance(messages, list):
        raise _Invalid(
            "messages", f"'messages' must be a list of {{role, content}} messages, got {_json_type(messages)}"
        )
    turns: list[tuple[int, str, str]] = []
    reasoning: str | None = None
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise _Invalid(
                "messages",
                f"message {number} is {_json_type(message)}; expected an object with 'role' and 'content'",
            )
        raw_role = message.get("role")
        if not isinstance(raw_role, str):
            raise _Invalid("messages", f"message {number} has no 'role' string")
        role = _OPENAI_ROLES.get(raw_role)
        if role is None:
            raise _Invalid(
                "messages",
                f"message {number} has unknown role '{raw_role}' (expected system, user, assistant or tool)",
            )
        if role == "tool" or message.get("tool_calls") or message.get("function_call"):
            what = f"role '{raw_role}'" if role == "tool" else "tool_calls"
            raise _Invalid(
                "messages",
                f"message {number} has {what}: tool calls are not supported; keep only records made of one "
                "'user' message and one 'assistant' message",
            )
        text = _turn_text(message.get("content"), "messages", f"message {number}", allow_parts=True)
        if role == "system":
            if number != 1:
                raise _Invalid(
                    "messages",
                    f"message {number} has role '{raw_role}': only a leading system message is allowed",
                )
            checks.run(partial(_check_system, text, "a system message"), None)
            continue
        if role == "assistant":
            value = message.get("reasoning_content")
            if value is not None and not isinstance(value, str):
                checks.add(
                    "messages",
                    f"message {number}: 'reasoning_content' must be a string, got {_json_type(value)}",
                )
            else:
                reasoning = value
        turns.append((number, role, text))
    return _pair(turns, "messages", "message", "user", "assistant"), reasoning


def _from_openai(obj: dict[str, Any], index: int, line: int) -> Record:
    checks = _Checks()
    _check_media(obj, checks)
    no_pair: tuple[tuple[str, str] | None, str | None] = (None, None)
    pair, reasoning = checks.run(lambda: _openai_pair(obj.get("messages"), checks), no_pair)
    content = _qa_content(pair, "messages", checks, reasoning=reasoning)
    checks.run(lambda: _check_tools(obj.get("tools")), None)
    checks.done()
    return _qa_record(obj, index, line, content, _OPENAI_KEYS)


def _check_question(question: str, field: str) -> None:
    if not question.strip():
        raise _Invalid(field, "the question is empty; give it a non-empty text or remove the record")
    _check_control_tokens(field, question, "the question")


def _split_reply(reply: str, field: str, reasoning: str | None) -> tuple[str, str, bool]:
    """(reasoning, answer, has_thinking) of a checked reply."""
    if reasoning is not None:
        # Like the official template: an explicit reasoning_content wins over think tags in the content.
        answer = reply
        thought = reasoning.strip("\n")
        has_thinking = bool(thought.strip())
    else:
        thought, answer, has_thinking = _split_think(reply, field, "the answer")
    if not answer.strip():
        raise _Invalid(field, "the answer is empty; give it a non-empty text or remove the record")
    for label, text in (("the reasoning", thought), ("the answer", answer)):
        _check_control_tokens(field, text, label)
    return thought, answer, has_thinking


def _qa_content(
    pair: tuple[str, str] | None, field: str, checks: _Checks, *, reasoning: str | None
) -> tuple[str, str, str, bool]:
    """(question, reasoning, answer, has_thinking) of a question/reply pair (None: its shape was wrong).

    The question and the reply are checked independently; their problems go to ``checks``.
    """
    if pair is None:
        return "", "", "", False
    question, reply = pair
    checks.run(lambda: _check_question(question, field), None)
    thought, answer, has_thinking = checks.run(lambda: _split_reply(reply, field, reasoning), ("", "", False))
    return question, thought, answer, has_thinking


def _qa_record(
    obj: dict[str, Any], index: int, line: int, content: tuple[str, str, str, bool], known: frozenset[str]
) -> Record:
    question, thought, answer, has_thinking = content
    return Record(
        index=index,
        line=line,
        instruction=question,
        input="",
        output=answer,
        reasoning=thought,
        has_thinking=has_thinking,
        extra={key: value for key, value in obj.items() if key not in known},
    )


_CONVERTERS = {
    "alpaca": _from_alpaca,
    "sharegpt": _from_sharegpt,
    "openai": _from_openai,
}
_SHAPE_HINT = (
    "alpaca/native {instruction, input, output, thinking}, sharegpt {conversations} or openai {messages}"
)


def _family(source_format: str) -> str:
    """Native records are alpaca records with extra fields: both go through one converter."""
    return "alpaca" if source_format == "native" else source_format


def _check_data_format(data_format: str) -> None:
    if data_format not in DATA_FORMATS:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"data format must be one of {', '.join(DATA_FORMATS)}, got '{data_format}'",
        )


def convert_record(raw: RawRecord, *, data_format: str = "auto") -> Record | list[RecordProblem]:
    """Validates one raw record and converts it to a Record.

    Args:
        raw: a record slot from :func:`iter_raw_records`.
        data_format: ``"auto"`` to detect the shape per record, or ``"native"``/``"alpaca"``,
            ``"sharegpt"``, ``"openai"`` to require one (other shapes become problems).

    Returns:
        The Record, or its problems (never an empty list), each naming the line, index, field
        and how to fix it. Independent fields are all checked, so a record with several bad
        fields gets one problem per field, in field order; a problem that makes the rest
        meaningless (not JSON, not an object, the wrong shape, a malformed conversation) is
        the record's only problem in that part.
    """
    _check_data_format(data_format)
    if raw.error:
        return [RecordProblem(line=raw.line, index=raw.index, field="", message=raw.error)]
    obj, bad_text = scan_text(raw.value)
    text_problems = [RecordProblem(raw.line, raw.index, found.field, found.message) for found in bad_text]
    try:
        if not isinstance(obj, dict):
            raise _Invalid("", f"the record is {_json_type(obj)}; expected an object: {_SHAPE_HINT}")
        detected = detect_source_format(obj)
        wanted = detected if data_format == "auto" else data_format
        shape = None if wanted is None else _family(wanted)
        if detected is not None and _family(detected) != shape:
            raise _Invalid(
                "",
                f"the record is in {detected} format but the data format is set to '{data_format}'; "
                "convert it or use data format 'auto'",
            )
        if shape is None:
            keys = ", ".join(sorted(obj)[:8]) or "none"
            raise _Invalid(
                "instruction",
                f"missing required field 'instruction' (the record's keys: {keys}); expected {_SHAPE_HINT}",
            )
        record = _CONVERTERS[shape](obj, raw.index, raw.line)
        return text_problems or record
    except _Invalid as exc:
        return text_problems + [
            RecordProblem(line=raw.line, index=raw.index, field=field, message=message)
            for field, message in exc.problems
        ]


def iter_records(
    path: Path, *, display_name: str, file_format: str | None = None, data_format: str = "auto"
) -> Iterator[Record | RecordProblem]:
    """Streams a data file as validated records, in constant memory.

    Every record slot (array element or non-blank line) yields its Record, or a RecordProblem
    for each of its problems (see :func:`convert_record`): a record with several bad fields
    yields several problems in a row, with the same index and line. Nothing is dropped
    silently; count invalid records by distinct ``index``, not by problems.

    Args:
        path: the data file (UTF-8, with or without BOM; LF or CRLF line endings).
        display_name: the name used in error messages (never a storage path).
        file_format: ``"json"`` or ``"jsonl"`` to force a format; None (or "") to auto-detect.
        data_format: ``"auto"`` (per record), ``"native"``/``"alpaca"``, ``"sharegpt"`` or ``"openai"``.

    Yields:
        Records and RecordProblems, in file order.

    Raises:
        CryptotuneError: DATA_INVALID for whole-file problems; REQUEST_INVALID for a bad format name.
    """
    _check_file_format(file_format)
    _check_data_format(data_format)
    for raw in iter_raw_records(path, display_name=display_name, file_format=file_format):
        item = convert_record(raw, data_format=data_format)
        if isinstance(item, Record):
            yield item
        else:
            yield from item
