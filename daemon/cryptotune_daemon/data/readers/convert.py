"""One record slot → a Record or its problems, by the record's source format; a whole file → records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptotune_daemon.data.readers.alpaca import _from_alpaca
from cryptotune_daemon.data.readers.decoding import RawRecord, _check_file_format, iter_raw_records
from cryptotune_daemon.data.readers.openai import _from_openai
from cryptotune_daemon.data.readers.record_checks import _Invalid
from cryptotune_daemon.data.readers.shapes import DATA_FORMATS, _json_type, detect_source_format
from cryptotune_daemon.data.readers.sharegpt import _from_sharegpt
from cryptotune_daemon.data.records import Record, RecordProblem
from cryptotune_daemon.data.text_checks import scan_text
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

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
    if raw.clean:  # nothing for scan_text to find or change: skip walking the record
        obj: Any = raw.value
        text_problems: list[RecordProblem] = []
    else:
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
