"""Streams training records out of JSON / JSON Lines files in the native, alpaca, sharegpt or openai shape.

The public entry of the readers; each role is a module of its own:

- ``decoding``: the file → record slots (:class:`RawRecord`), streaming, with line numbers;
- ``shapes``: a record's source format (:func:`detect_source_format`) and JSON type names;
- ``record_checks``: the checks of one field of a record;
- ``alpaca`` (native too), ``sharegpt``, ``openai``: one converter per source format;
- ``chat``: what the sharegpt and openai converters share;
- ``convert``: a record slot → a Record or its problems (:func:`convert_record`, :func:`iter_records`).
"""

from cryptotune_daemon.data.readers.convert import convert_record, iter_records
from cryptotune_daemon.data.readers.decoding import (
    FILE_FORMATS,
    MAX_RECORD_CHARS,
    RawRecord,
    detect_file_format,
    iter_raw_records,
)
from cryptotune_daemon.data.readers.record_checks import DIFFICULTY_NAMES
from cryptotune_daemon.data.readers.shapes import DATA_FORMATS, SOURCE_FORMATS, detect_source_format

__all__ = [
    "DATA_FORMATS",
    "DIFFICULTY_NAMES",
    "FILE_FORMATS",
    "MAX_RECORD_CHARS",
    "SOURCE_FORMATS",
    "RawRecord",
    "convert_record",
    "detect_file_format",
    "detect_source_format",
    "iter_raw_records",
    "iter_records",
]
