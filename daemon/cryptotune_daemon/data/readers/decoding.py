"""Streams the record slots of a JSON array or JSON Lines file (UTF-8, with line numbers) as RawRecords."""

from __future__ import annotations

import codecs
import json
import json.scanner
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from cryptotune_daemon.data.readers.shapes import _json_type, detect_source_format
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

FILE_FORMATS: Final = ("json", "jsonl")
_CHUNK_BYTES = 1 << 20
# A single record larger than this is certainly not a Q&A sample; refusing it bounds the
# buffer the streaming parser may need (it never holds more than one pending element).
MAX_RECORD_CHARS: Final = 64 << 20
_WHITESPACE = " \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"
# The JSON escapes that can make a carriage return, a C0 control other than tab and newline, or a
# lone surrogate. Strict JSON has no raw control characters inside strings, and decoded UTF-8 has no
# surrogates, so a record whose text has none of these escapes holds no such character anywhere.
_UNCLEAN_ESCAPE = re.compile(r"\\[bfru]")


@dataclass(frozen=True)
class RawRecord:
    """One record slot of a file before conversion: a parsed JSON value or why it did not parse.

    Attributes:
        index: 0-based position of the record in its file.
        line: 1-based line where the record starts.
        value: the parsed JSON value (None when ``error`` is set).
        error: why the record could not be parsed as JSON ("" when it parsed).
        clean: True when the record's JSON text has no escape that could make a carriage return, a
            control character or a lone surrogate (``\\b``, ``\\f``, ``\\r``, ``\\u``), so
            :func:`~cryptotune_daemon.data.text_checks.scan_text` would find and change nothing.
            False when unknown.
    """

    index: int
    line: int
    value: Any
    error: str = ""
    clean: bool = False


def _data_error(display_name: str, message: str) -> CryptotuneError:
    return CryptotuneError(ErrorCode.DATA_INVALID, f"{display_name}: {message}")


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
# What _DECODER.raw_decode calls (typeshed types make_scanner's argument as itself).
_SCAN_ONCE: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]
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
        start = scanner.base + scanner.pos  # in file text: reading on may drop consumed text
        value = _decode_value(scanner, display_name, f"array element {index}")
        clean = _UNCLEAN_ESCAPE.search(scanner.buf, start - scanner.base, scanner.pos) is None
        yield RawRecord(index=index, line=line, value=value, clean=clean)
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


def _loads_line(text: str) -> Any:
    """``json.loads(text)``; a line that is exactly one JSON value skips its Python wrappers."""
    try:
        value, end = _SCAN_ONCE(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)  # its error, with its message and column
    return value if end == len(text) else json.loads(text)


def _iter_jsonl(source: _TextSource, display_name: str) -> Iterator[RawRecord]:
    index = 0
    for line, text in _iter_lines(source, display_name):
        stripped = text.strip()
        if not stripped:
            continue
        if len(stripped) > MAX_RECORD_CHARS:
            raise _data_error(display_name, f"line {line} is longer than {MAX_RECORD_CHARS >> 20} MiB")
        try:
            value = _loads_line(text)
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
        yield RawRecord(index=index, line=line, value=value, clean=_UNCLEAN_ESCAPE.search(text) is None)
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
