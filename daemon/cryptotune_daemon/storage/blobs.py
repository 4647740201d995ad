"""Content-addressed store for uploaded data files (sha256, deduplicated, size-capped)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

_DIGEST = re.compile(r"[0-9a-f]{64}")
DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3


def check_digest(digest: str) -> str:
    """Returns ``digest`` if it is a lower-case hex sha256, else raises REQUEST_INVALID."""
    if not _DIGEST.fullmatch(digest):
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"'{digest[:80]}' is not a sha256 digest (64 lower-case hex digits)"
        )
    return digest


@dataclass(frozen=True)
class StoredBlob:
    """A blob in the store."""

    digest: str
    size: int
    path: Path
    deduplicated: bool = False


class BlobWriter:
    """Receives one upload into a temporary file, hashing and size-checking as it goes."""

    def __init__(self, store: BlobStore, expected_size: int, expected_digest: str) -> None:
        self._store = store
        self._expected_size = expected_size
        self._expected_digest = expected_digest
        self._hash = hashlib.sha256()
        self._size = 0
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        self._file = os.fdopen(fd, "wb")
        self._tmp_path = Path(name)

    def write(self, chunk: bytes) -> None:
        """Appends a chunk; refuses once the upload exceeds the store's cap."""
        self._size += len(chunk)
        if self._size > self._store.max_bytes:
            raise CryptotuneError(
                ErrorCode.UPLOAD_TOO_LARGE,
                f"upload exceeds the daemon's limit of {self._store.max_bytes // (1024 * 1024)} MiB "
                "(start cryptotuned with a larger --max-upload-mb)",
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> StoredBlob:
        """Verifies the digest and size, then moves the file to its content address."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hash.hexdigest()
        if self._expected_digest and digest != self._expected_digest:
            raise CryptotuneError(
                ErrorCode.UPLOAD_CORRUPT,
                f"upload corrupted in transit: sha256 {digest} does not match the announced "
                f"{self._expected_digest}; retry the upload",
            )
        if self._expected_size and self._size != self._expected_size:
            raise CryptotuneError(
                ErrorCode.UPLOAD_CORRUPT,
                f"upload truncated: received {self._size} of {self._expected_size} bytes; retry the upload",
            )
        final = self._store.path_for(digest)
        if final.exists():
            self._tmp_path.unlink(missing_ok=True)
            return StoredBlob(digest, self._size, final, deduplicated=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp_path, final)
        return StoredBlob(digest, self._size, final)

    def abort(self) -> None:
        """Drops the partial upload."""
        if not self._file.closed:
            self._file.close()
        self._tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()


class BlobStore:
    """Files stored at ``root/ab/abcdef…`` by sha256; never at client-chosen paths."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        """Where a blob with this digest lives (whether or not it exists)."""
        check_digest(digest)
        return self.root / digest[:2] / digest

    def writer(self, expected_size: int = 0, expected_digest: str = "") -> BlobWriter:
        """Starts an upload."""
        if expected_digest:
            check_digest(expected_digest)
        if expected_size < 0:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, "upload size must be >= 0")
        if expected_size > self.max_bytes:
            raise CryptotuneError(
                ErrorCode.UPLOAD_TOO_LARGE,
                f"file of {expected_size} bytes exceeds the daemon's upload limit of "
                f"{self.max_bytes // (1024 * 1024)} MiB (start cryptotuned with a larger --max-upload-mb)",
            )
        return BlobWriter(self, expected_size, expected_digest)

    def stat(self, digest: str) -> StoredBlob | None:
        """The stored blob, or None when absent."""
        path = self.path_for(digest)
        try:
            return StoredBlob(digest, path.stat().st_size, path)
        except FileNotFoundError:
            return None

    def get(self, digest: str) -> StoredBlob:
        """The stored blob; BLOB_NOT_FOUND when absent."""
        blob = self.stat(digest)
        if blob is None:
            raise CryptotuneError(
                ErrorCode.BLOB_NOT_FOUND, f"no uploaded file with digest {digest}; upload it first"
            )
        return blob
