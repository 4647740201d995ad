"""Session-wide fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tokenizer_cache_dir() -> Path:
    """A cache directory holding the built Qwen3 tokenizer for the whole session (the one the test
    daemons' caches are seeded from: tests/helpers/tokenizer_cache.py)."""
    from tests.helpers.tokenizer_cache import session_tokenizer_cache

    return session_tokenizer_cache()


@pytest.fixture(scope="session")
def qwen3_tokenizer(tokenizer_cache_dir: Path) -> Any:
    """The real Qwen3 tokenizer, built offline once per session (a few seconds)."""
    from cryptotune_daemon.data.tokenizer import BUILTIN_TINY_QWEN3, load_tokenizer

    return load_tokenizer(BUILTIN_TINY_QWEN3, tokenizer_cache_dir)
