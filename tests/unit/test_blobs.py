"""Content-addressed upload store: verification, dedupe, caps, no client-chosen paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.storage.blobs import BlobStore


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_is_stored_by_digest_and_deduplicated(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = "数据".encode() * 1000
    with store.writer(len(data), _digest(data)) as writer:
        writer.write(data[:100])
        writer.write(data[100:])
        first = writer.commit()
    assert first.path == tmp_path / first.digest[:2] / first.digest
    assert first.path.read_bytes() == data and not first.deduplicated
    with store.writer(len(data), _digest(data)) as writer:
        writer.write(data)
        second = writer.commit()
    assert second.deduplicated and second.path == first.path
    assert list((tmp_path / "tmp").iterdir()) == []


def test_corrupt_or_truncated_uploads_are_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(CryptotuneError) as info, store.writer(3, _digest(b"abc")) as writer:
        writer.write(b"abd")
        writer.commit()
    assert info.value.code is ErrorCode.UPLOAD_CORRUPT
    with pytest.raises(CryptotuneError) as info, store.writer(10, "") as writer:
        writer.write(b"abc")
        writer.commit()
    assert "truncated" in info.value.message
    assert list((tmp_path / "tmp").iterdir()) == []


def test_size_cap_on_announce_and_on_stream(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=10)
    with pytest.raises(CryptotuneError) as info:
        store.writer(11, "")
    assert info.value.code is ErrorCode.UPLOAD_TOO_LARGE
    with pytest.raises(CryptotuneError) as info, store.writer(0, "") as writer:
        writer.write(b"x" * 11)
    assert info.value.code is ErrorCode.UPLOAD_TOO_LARGE


@pytest.mark.parametrize("digest", ["../../etc/passwd", "A" * 64, "abc", "g" * 64, ""])
def test_digests_are_validated(tmp_path: Path, digest: str) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(CryptotuneError) as info:
        store.stat(digest)
    assert info.value.code is ErrorCode.REQUEST_INVALID


def test_missing_blob_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(CryptotuneError) as info:
        BlobStore(tmp_path).get("0" * 64)
    assert info.value.code is ErrorCode.BLOB_NOT_FOUND
