"""Inputs the fuzz (tests/fuzz/test_fuzz_properties.py) or field reports found to break something,
as plain tests."""

from __future__ import annotations

from pathlib import Path

from cryptotune_daemon.config import validate_config_text
from cryptotune_daemon.config.system_paths import check_job_dirs
from cryptotune_daemon.data.readers import RawRecord, convert_record
from cryptotune_daemon.data.records import Record
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.services.error_catalog import bounded_message


def test_a_lone_surrogate_in_instruction_is_a_record_problem_not_an_internal_error() -> None:
    # The issue's report: inspect-data answered INTERNAL, training failed with a TypeError in tokenizers.
    (problem,) = convert_record(RawRecord(0, 1, {"instruction": "\ud800", "output": "a"}))  # type: ignore[misc]
    assert problem.field == "instruction" and "U+D800" in problem.message


def test_an_error_message_holding_a_surrogate_still_reaches_the_client() -> None:
    # bounded_message used to raise UnicodeEncodeError, which turned any such error into INTERNAL.
    assert bounded_message("bad key '\ud800'") == "bad key '\\ud800'"


def test_a_control_character_as_a_key_is_named_escaped() -> None:
    problem, missing = convert_record(RawRecord(0, 1, {"\x1f": ""}))  # type: ignore[misc]
    assert problem.field == "\\x1f" and missing.field == "instruction"
    problem.message.encode("utf-8")


def test_an_empty_object_names_the_missing_field() -> None:
    (problem,) = convert_record(RawRecord(0, 1, {}))  # type: ignore[misc]
    assert problem.field == "instruction" and "keys: none" in problem.message


def test_crlf_only_text_is_not_a_problem() -> None:
    record = convert_record(RawRecord(0, 1, {"instruction": "q\r\n", "output": "\r\na"}))
    assert isinstance(record, Record) and record.output == "\na"


def test_a_nul_in_a_system_path_is_a_config_error_with_its_line() -> None:
    # check_job_dirs used to reach os.path.realpath, which raises ValueError on a NUL byte.
    report = validate_config_text('system:\n  cache_dir: "a\\x00b"\n')
    assert [(issue.path, issue.line) for issue in report.errors] == [("system.cache_dir", 2)]


def test_an_unusable_job_dir_is_refused_not_raised(tmp_path: Path) -> None:
    try:
        check_job_dirs(tmp_path, "logs\x00", None, (tmp_path,))
    except CryptotuneError as error:
        assert error.code is ErrorCode.CONFIG_INVALID and "system.logging_dir" in error.message
    else:
        raise AssertionError("a NUL in a path must be refused")


def test_cr_cr_lf_leaves_no_crlf_behind() -> None:
    # Found by the thorough fuzz: replacing "\r\n" once turned "\r\r\n" into a new "\r\n".
    record = convert_record(RawRecord(0, 1, {"instruction": "0", "output": "0\r\r\n1"}))
    assert isinstance(record, Record) and record.output == "0\n1"
