"""Model resolution (builtin tiny Qwen3, local directory, Hugging Face cache) and loading."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cryptotune_daemon.constants import BUILTIN_PREFIX, BUILTIN_TINY_QWEN3
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.path_text import expand_home

# Fixed so every process (and every rank) builds bit-identical tiny weights.
TINY_QWEN3_SEED = 20250731
log = logging.getLogger(__name__)

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")

ModelKind = Literal["builtin", "local", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    Attributes:
        name: the name as configured (``model.model_name``).
        kind: ``builtin``, ``local`` (a directory) or ``hub`` (a Hugging Face id found in the cache).
        path: the directory holding config.json and weights (None for builtin models).
        trust_remote_code: whether loading may run the model repository's code.
    """

    name: str
    kind: ModelKind
    path: Path | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class ModelFacts:
    """Sizes the memory planner needs, read without loading weights."""

    num_parameters: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int


TINY_QWEN3_FINAL_NORM = 8.0


def tiny_qwen3_config() -> Any:
    """The ``Qwen3Config`` of ``builtin:tiny-qwen3`` (~9.8 M parameters, real Qwen3 vocabulary)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )


def build_tiny_qwen3(seed: int = TINY_QWEN3_SEED) -> Any:
    """Builds ``builtin:tiny-qwen3`` with weights drawn from ``seed``.

    The global RNG is forked so building the model does not disturb the training seed.
    """
    from transformers import Qwen3ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(tiny_qwen3_config())
        # With the default init (std 0.02) the tied 64-wide embedding caps every logit near ±1.3, so
        # LoRA could only move the loss ~0.2 nat from uniform: the demo's curve would be flat. A
        # larger final-norm gain lets the logits spread (the demo's loss then falls ~1.7 nat).
        model.model.norm.weight.data.fill_(TINY_QWEN3_FINAL_NORM)
    model.train(False)
    return model


def _has_weights(path: Path) -> bool:
    return any(next(path.glob(pattern), None) is not None for pattern in _WEIGHT_PATTERNS)


def _hub_cache_hint() -> str:
    home = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return home


def _offline() -> bool:
    """Whether Hugging Face offline mode is on (read now, not when huggingface_hub was imported)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(
        f.strip().lower() in ("1", "true", "yes", "on") for f in flags
    )


def _endpoint() -> str:
    """The Hugging Face endpoint downloads use (``HF_ENDPOINT`` selects a mirror)."""
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def _not_cached(name: str, detail: str, why_not_fetched: str) -> CryptotuneError:
    return CryptotuneError(
        ErrorCode.MODEL_UNAVAILABLE,
        f"model '{name}' {detail} in the local Hugging Face cache ({_hub_cache_hint()}) "
        f"and {why_not_fetched}. "
        f"Fetch it on a machine with access, e.g. `huggingface-cli download {name}` (or "
        f"`hf download {name}`) with the daemon's HF_HOME, or set model.model_name to a local directory "
        "holding config.json and the weights",
    )


MODELSCOPE_INSTALL = "pip install modelscope"


def _modelscope_unavailable(name: str, detail: str) -> CryptotuneError:
    cache = os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope"
    return CryptotuneError(
        ErrorCode.MODEL_UNAVAILABLE,
        f"model '{name}' could not be fetched from ModelScope ({detail}). The daemon looks in the "
        f"ModelScope cache ({cache}, set by MODELSCOPE_CACHE); fetch it on a machine with access with "
        f"`modelscope download --model {name}` and the daemon's MODELSCOPE_CACHE, set model.hub: huggingface "
        "(HF_ENDPOINT selects a mirror such as https://hf-mirror.com), or set model.model_name to a local "
        "directory holding config.json and the weights",
    )


def _modelscope_snapshot(repo_id: str, revision: str) -> Path:
    """The model's snapshot from ModelScope (its cache first; downloaded unless offline mode is on)."""
    if importlib.util.find_spec("modelscope") is None:
        raise CryptotuneError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"model.hub is modelscope, but the modelscope package is not installed where the daemon runs: "
            f"install it in the daemon's environment with `{MODELSCOPE_INSTALL}`, or set model.hub: "
            "huggingface (HF_ENDPOINT selects a mirror)",
        )
    modelscope: Any = importlib.import_module("modelscope")
    patterns = [*_DOWNLOAD_PATTERNS, *_BIN_PATTERNS]
    ms_revision = None if revision == "main" else revision  # ModelScope's default branch is "master"
    try:
        snapshot = Path(
            str(
                modelscope.snapshot_download(
                    repo_id, revision=ms_revision, allow_patterns=patterns, local_files_only=_offline()
                )
            )
        )
    except Exception as error:  # network, unknown model, offline and not cached ...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        offline = " with offline mode on (HF_HUB_OFFLINE)" if _offline() else ""
        raise _modelscope_unavailable(repo_id, f"{first_line}{offline}") from error
    if not (snapshot / "config.json").is_file() or not _has_weights(snapshot):
        raise _modelscope_unavailable(repo_id, "the repository has no config.json and weights")
    return snapshot


# What training needs from a hub repo: config, tokenizer files and weights (safetensors preferred;
# .bin only for repos without them). Not the README, images or other formats' weights.
_DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.safetensors"]
_BIN_PATTERNS = ["pytorch_model*.bin", "model*.bin"]


def resolve_model(
    name: str,
    *,
    trust_remote_code: bool = False,
    allow_remote_code: bool = False,
    revision: str = "main",
    hub: str = "huggingface",
) -> ModelSource:
    """Finds a model without loading it; downloads a hub model missing from the cache unless offline.

    Args:
        name: ``builtin:tiny-qwen3``, a local directory, or a Hugging Face id (cached, or downloaded
            when ``HF_HUB_OFFLINE`` is not set).
        trust_remote_code: the config's ``model.trust_remote_code``.
        allow_remote_code: whether the daemon permits remote code.
        revision: branch, tag or commit of a hub model (``model.model_revision``).
        hub: ``huggingface`` (``HF_ENDPOINT`` selects a mirror) or ``modelscope`` (``model.hub``).

    Raises:
        CryptotuneError: REMOTE_CODE_REFUSED, or MODEL_UNAVAILABLE saying how to make the model available.
    """
    if trust_remote_code and not allow_remote_code:
        raise CryptotuneError(
            ErrorCode.REMOTE_CODE_REFUSED,
            "model.trust_remote_code is true, but the daemon was not started with --allow-remote-code; "
            "Qwen3 needs no remote code: set it to false",
        )
    if name.startswith(BUILTIN_PREFIX):
        if name != BUILTIN_TINY_QWEN3:
            raise CryptotuneError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"unknown builtin model '{name}'; the builtin model is {BUILTIN_TINY_QWEN3}",
            )
        return ModelSource(name=name, kind="builtin")
    path = expand_home(name)
    looks_like_path = name.startswith(("/", ".", "~")) or path.exists()
    if looks_like_path:
        if not path.is_dir():
            raise CryptotuneError(ErrorCode.MODEL_UNAVAILABLE, f"model directory {path} does not exist")
        if not (path / "config.json").is_file() or not _has_weights(path):
            raise CryptotuneError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"model directory {path} must hold config.json and the weights (*.safetensors or "
                "pytorch_model*.bin), as written by save_pretrained or huggingface-cli download --local-dir",
            )
        return ModelSource(name=name, kind="local", path=path.resolve(), trust_remote_code=trust_remote_code)
    snapshot = (
        _modelscope_snapshot(name, revision) if hub == "modelscope" else _cached_snapshot(name, revision)
    )
    return ModelSource(name=name, kind="hub", path=snapshot, trust_remote_code=trust_remote_code)


def _cached_snapshot(repo_id: str, revision: str) -> Path:
    """The model's snapshot: from the cache, else downloaded from the Hub unless offline mode is on."""
    from huggingface_hub import snapshot_download

    what = "is not" if revision == "main" else f"at revision '{revision}' is not"
    snapshot: Path | None = None
    try:
        snapshot = Path(str(snapshot_download(repo_id, revision=revision, local_files_only=True)))
    except Exception as error:  # LocalEntryNotFoundError, HFValidationError, ...
        if type(error).__name__ == "HFValidationError":
            raise CryptotuneError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"model '{repo_id}' is neither a builtin model, a local directory "
                "nor a valid Hugging Face id",
            ) from error
    if snapshot is not None and (snapshot / "config.json").is_file() and _has_weights(snapshot):
        return snapshot
    if snapshot is not None:
        what = "has no complete weights"
    if _offline():
        raise _not_cached(
            repo_id,
            what,
            "offline mode is on (HF_HUB_OFFLINE), so it is not downloaded; unset HF_HUB_OFFLINE in the "
            "daemon's environment to let it download",
        )
    log.warning("model %s %s in the Hugging Face cache: downloading it from the Hub", repo_id, what)
    try:
        # Several ranks may do this at once: huggingface_hub locks each file while it downloads.
        snapshot = Path(
            str(
                snapshot_download(
                    repo_id, revision=revision, allow_patterns=_DOWNLOAD_PATTERNS, endpoint=_endpoint()
                )
            )
        )
        if not _has_weights(snapshot):
            snapshot = Path(
                str(
                    snapshot_download(
                        repo_id, revision=revision, allow_patterns=_BIN_PATTERNS, endpoint=_endpoint()
                    )
                )
            )
    except Exception as error:  # network, auth (gated repos), unknown repo or revision, full disk ...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise _not_cached(
            repo_id,
            what,
            f"downloading it from {_endpoint()} failed ({first_line}); if that host is unreachable from "
            "the daemon's machine, set HF_ENDPOINT to a mirror (e.g. HF_ENDPOINT=https://hf-mirror.com) in "
            "the daemon's environment, or use model.hub: modelscope",
        ) from error
    if not (snapshot / "config.json").is_file() or not _has_weights(snapshot):
        raise _not_cached(repo_id, what, "the Hub repository has no config.json and weights")
    return snapshot


def load_model_config(source: ModelSource) -> Any:
    """The model's ``PretrainedConfig`` (no weights loaded)."""
    if source.kind == "builtin":
        return tiny_qwen3_config()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        str(source.path), trust_remote_code=source.trust_remote_code, local_files_only=True
    )


def model_facts(source: ModelSource) -> ModelFacts:
    """Parameter count and shapes, from the config and a weightless (meta device) instance."""
    config = load_model_config(source)
    from transformers import AutoModelForCausalLM

    auto: Any = AutoModelForCausalLM  # from_config is untyped
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=source.trust_remote_code)
    # parameters() yields tied weights once, which is what occupies memory.
    count = sum(p.numel() for p in model.parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_attention_heads", 1))
    hidden = int(text.hidden_size)
    return ModelFacts(
        num_parameters=int(count),
        hidden_size=hidden,
        intermediate_size=int(getattr(text, "intermediate_size", 4 * hidden)),
        num_layers=int(text.num_hidden_layers),
        num_attention_heads=heads,
        num_key_value_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
        vocab_size=int(text.vocab_size),
    )


VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def attention_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """``flash_attention_2`` on a CUDA device in half precision when flash-attn is installed, else ``sdpa``.

    Packed batches work with both: SDPA gets a block-diagonal causal mask built from the restarting
    position ids (attention cost per row grows with the row's square), FlashAttention's varlen
    kernel gets the sample boundaries (cost per sample). flash-attn is optional and often missing
    or built for another torch: any failure to find it means SDPA.
    """
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return "sdpa"
    try:
        from transformers.utils.import_utils import is_flash_attn_2_available

        return "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    except Exception:  # a broken flash-attn install must not stop training
        return "sdpa"


def uses_varlen_attention(model: Any) -> bool:
    """Whether ``model`` attends with FlashAttention (packed batches then go in as one unpadded row)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in VARLEN_ATTENTION


def load_base_model(source: ModelSource, *, dtype: torch.dtype, device: torch.device) -> Any:
    """Loads the base causal LM in ``dtype`` on ``device`` (from the cache or directory only)."""
    attention = attention_implementation(device, dtype)
    if source.kind == "builtin":
        # Cast first: FlashAttention refuses a model that is still in fp32.
        model = build_tiny_qwen3().to(device=device, dtype=dtype)
        if attention != "sdpa":
            model.set_attn_implementation(attention)
        return model
    from transformers import AutoModelForCausalLM

    auto: Any = AutoModelForCausalLM  # from_pretrained's wrapper is mistyped
    model = auto.from_pretrained(
        str(source.path),
        dtype=dtype,
        trust_remote_code=source.trust_remote_code,
        local_files_only=True,
        attn_implementation=attention,
    )
    return model.to(device=device, dtype=dtype)
