"""Atomic checkpoints: manifest verification, ignored partial writes, and resume checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.checkpoints import (
    Hashes,
    find_checkpoint,
    newest_verified,
    refuse_if_changed,
    remove_temp_dirs,
    verify_checkpoint,
    write_checkpoint,
)
from cryptotune_daemon.training.hashing import config_differences, config_hash, sha256_file
from tests.helpers.checkpoints import list_checkpoints

HASHES = Hashes(data="a" * 64, config="b" * 64, tokenizer="c" * 64)


def _files(content: str) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        (directory / "adapter").mkdir()
        (directory / "adapter" / "weights.bin").write_bytes(content.encode() * 10)
        (directory / "trainer_state.json").write_text(json.dumps({"content": content}))

    return write


def test_write_produces_a_verified_manifest(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 5, _files("five"), HASHES, extra={"epoch": 1})
    assert path == tmp_path / "checkpoints" / "step-000005"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 5 and manifest["epoch"] == 1 and manifest["created_at"] > 0
    assert manifest["files"] == {
        "adapter/weights.bin": sha256_file(path / "adapter" / "weights.bin"),
        "trainer_state.json": sha256_file(path / "trainer_state.json"),
    }
    info, problem = verify_checkpoint(path)
    assert info is not None and problem == "" and info.hashes == HASHES
    # nothing temporary is left behind
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000005"]


def test_a_corrupt_file_makes_the_checkpoint_unverified_and_skipped(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 2, _files("two"), HASHES)
    newest = write_checkpoint(tmp_path, 4, _files("four"), HASHES)
    (newest / "adapter" / "weights.bin").write_bytes(b"flipped")
    info, problem = verify_checkpoint(newest)
    assert info is None and "adapter/weights.bin does not match its recorded sha256" in problem
    warnings: list[str] = []
    chosen = newest_verified(tmp_path, warnings.append)
    assert chosen is not None and chosen.step == 2
    assert warnings and "step-000004" in warnings[0]
    assert [c.step for c in list_checkpoints(tmp_path)] == [2]


def test_a_missing_file_or_manifest_is_not_verified(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 3, _files("three"), HASHES)
    (path / "trainer_state.json").unlink()
    assert "trainer_state.json is missing" in verify_checkpoint(path)[1]
    (path / "manifest.json").unlink()
    assert "no manifest.json" in verify_checkpoint(path)[1]


def test_partial_temp_dirs_are_ignored_and_cleaned(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 1, _files("one"), HASHES)
    partial = tmp_path / "checkpoints" / ".tmp-step-000009-deadbeef"
    partial.mkdir()
    (partial / "trainer_state.json").write_text("{}")
    assert [c.step for c in list_checkpoints(tmp_path)] == [1]
    chosen = newest_verified(tmp_path)
    assert chosen is not None and chosen.step == 1
    assert remove_temp_dirs(tmp_path) == 1 and not partial.exists()


def test_a_failed_write_leaves_no_checkpoint(tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        (directory / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path, 7, broken, HASHES)
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert newest_verified(tmp_path) is None


def test_rewriting_a_step_replaces_it(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 6, _files("old"), HASHES)
    path = write_checkpoint(tmp_path, 6, _files("new"), HASHES)
    assert json.loads((path / "trainer_state.json").read_text()) == {"content": "new"}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000006"]


def test_refuse_if_changed_names_what_changed(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 4, _files("four"), HASHES)
    info = find_checkpoint(tmp_path, None)
    assert info is not None and info.step == 4
    refuse_if_changed(info.hashes, HASHES, f"checkpoint {info.path.name}")
    with pytest.raises(CryptotuneError) as raised:
        refuse_if_changed(
            info.hashes, Hashes("f" * 64, HASHES.config, HASHES.tokenizer), "checkpoint step-000004"
        )
    assert raised.value.code is ErrorCode.RESUME_REFUSED
    assert "the data file changed since checkpoint step-000004" in raised.value.message
    with pytest.raises(CryptotuneError) as raised:
        refuse_if_changed(info.hashes, Hashes(HASHES.data, "e" * 64, "d" * 64), "checkpoint step-000004")
    assert "the config and the tokenizer changed" in raised.value.message


def test_a_chosen_step_must_exist_and_verify(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 2, _files("two"), HASHES)
    with pytest.raises(CryptotuneError) as raised:
        find_checkpoint(tmp_path, 3)
    assert "no checkpoint at step 3" in raised.value.message and "available steps: 2" in raised.value.message
    assert find_checkpoint(tmp_path, 2) is not None


def test_config_hash_ignores_formatting_and_differences_name_fields() -> None:
    from cryptotune_daemon.config import load_config

    a = load_config("training:\n  learning_rate: 2e-4\n  seed: 1\n")
    b = load_config("# comment\ntraining: {seed: 1, learning_rate: 0.0002}\n")
    c = load_config("training:\n  learning_rate: 3e-4\n  seed: 1\n")
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_differences(a.model_dump(mode="json"), c.model_dump(mode="json")) == [
        "training.learning_rate: 0.0002 -> 0.0003"
    ]
