"""The Qwen3 tokenizer cache, built once per test session: the unit tests' tokenizer fixtures use it,
and it is copied into each test daemon's state dir.

A daemon builds the Qwen3 tokenizer into ``<state dir>/cache`` on its first job or inspection (about
5 s here), and the integration tests start dozens of daemons, each with a fresh state dir: without
this, most of them would pay that build again. The build itself, its atomic rename and its
rebuild when outdated are tested in ``tests/unit/test_tokenizer.py``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from cryptotune_daemon.data.tokenizer import BUILTIN_TINY_QWEN3, load_tokenizer, qwen3_tokenizer_dir

_lock = threading.Lock()
_built: Path | None = None


def session_tokenizer_cache() -> Path:
    """A cache dir holding the built tokenizer, made on first use and removed when the session ends."""
    global _built  # noqa: PLW0603 - one build per test process
    with _lock:
        if _built is None:
            root = Path(tempfile.mkdtemp(prefix="ct-tokenizer-"))
            atexit.register(shutil.rmtree, root, True)
            load_tokenizer(BUILTIN_TINY_QWEN3, root)
            _built = root
        return _built


def seed_tokenizer_cache(state_dir: Path) -> None:
    """Copies the session's built tokenizer into the cache of a daemon that will use ``state_dir``."""
    source = qwen3_tokenizer_dir(session_tokenizer_cache())
    target = qwen3_tokenizer_dir(state_dir / "cache")
    if not target.exists():
        shutil.copytree(source, target)
