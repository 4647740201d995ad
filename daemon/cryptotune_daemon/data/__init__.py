"""Training data: reading and validating records, rendering, tokenising and inspection."""

from cryptotune_daemon.constants import BUILTIN_TINY_QWEN3, IGNORE_INDEX
from cryptotune_daemon.data.inspect import InspectionReport, inspect_data, length_stats
from cryptotune_daemon.data.readers import (
    DATA_FORMATS,
    FILE_FORMATS,
    SOURCE_FORMATS,
    RawRecord,
    convert_record,
    detect_file_format,
    detect_source_format,
    iter_raw_records,
    iter_records,
)
from cryptotune_daemon.data.records import Record, RecordProblem
from cryptotune_daemon.data.template import RenderedSample, extract_reasoning, render_prompt, render_record
from cryptotune_daemon.data.tokenizer import (
    TokenizedSample,
    build_qwen3_tokenizer,
    clear_tokenizer_memo,
    load_tokenizer,
    tokenize_sample,
    tokenize_samples,
)

__all__ = [
    "BUILTIN_TINY_QWEN3",
    "DATA_FORMATS",
    "FILE_FORMATS",
    "IGNORE_INDEX",
    "SOURCE_FORMATS",
    "InspectionReport",
    "RawRecord",
    "Record",
    "RecordProblem",
    "RenderedSample",
    "TokenizedSample",
    "build_qwen3_tokenizer",
    "clear_tokenizer_memo",
    "convert_record",
    "detect_file_format",
    "detect_source_format",
    "extract_reasoning",
    "inspect_data",
    "iter_raw_records",
    "iter_records",
    "length_stats",
    "load_tokenizer",
    "render_prompt",
    "render_record",
    "tokenize_sample",
    "tokenize_samples",
]
