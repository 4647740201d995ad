"""The daemon↔model-worker contract: what to load, what to generate, and the JSON lines they exchange.

Two worker processes serve a finished job's model: the inference worker (``worker/inference.py``,
chat) and the export worker (``worker/export.py``, merged export). The daemon writes a
:class:`ModelRequest` file for either; the inference worker then reads one :class:`GenerateParams`
per ``generate`` line on its stdin. Both answer with JSON lines on stdout, whose ``type`` is one of
:data:`MESSAGE_TYPES`. Nothing else assembles or parses these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

# The model card's sampling values (Qwen3-4B-Thinking-2507), used by chat and written to exports.
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 20
DEFAULT_MAX_NEW_TOKENS = 1024
MAX_NEW_TOKENS_LIMIT = 32768

MODEL_TUNED = "tuned"
MODEL_BASE = "base"
CHANNEL_REASONING = "reasoning"
CHANNEL_ANSWER = "answer"
# Worker → daemon line types.
MESSAGE_TYPES = ("ready", "status", "piece", "done", "progress", "finished", "error")


@dataclass(frozen=True)
class ModelRequest:
    """Which model a worker loads (a job's base model plus its adapter) and where it works.

    Attributes:
        job_id: the job whose model this is.
        model_name: ``model.model_name`` of the job's config.
        revision: ``model.model_revision``.
        trust_remote_code: ``model.trust_remote_code`` (already allowed by the daemon).
        adapter_dir: the job's trained adapter (peft format, with its tokenizer).
        precision: the training precision (``bf16``, ``fp16`` or ``fp32``).
        device: ``cpu`` or ``cuda`` (the GPU is chosen by ``CUDA_VISIBLE_DEVICES``).
        cache_dir: the daemon's cache (tokenizer builds).
        output_dir: for an export, where the merged model is written.
        model_card: for an export, facts for its README (base, data, report figures).
    """

    job_id: str
    model_name: str
    adapter_dir: Path
    cache_dir: Path
    revision: str = "main"
    trust_remote_code: bool = False
    precision: str = "fp32"
    device: str = "cpu"
    output_dir: Path | None = None
    model_card: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The request's JSON object."""
        return {
            "job_id": self.job_id,
            "model_name": self.model_name,
            "revision": self.revision,
            "trust_remote_code": self.trust_remote_code,
            "adapter_dir": str(self.adapter_dir),
            "cache_dir": str(self.cache_dir),
            "precision": self.precision,
            "device": self.device,
            "output_dir": None if self.output_dir is None else str(self.output_dir),
            "model_card": self.model_card,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelRequest:
        """Reads a request back.

        Raises:
            CryptotuneError: REQUEST_INVALID when a field is missing.
        """
        try:
            output = raw.get("output_dir")
            return cls(
                job_id=str(raw["job_id"]),
                model_name=str(raw["model_name"]),
                revision=str(raw.get("revision") or "main"),
                trust_remote_code=bool(raw.get("trust_remote_code", False)),
                adapter_dir=Path(str(raw["adapter_dir"])),
                cache_dir=Path(str(raw["cache_dir"])),
                precision=str(raw.get("precision") or "fp32"),
                device=str(raw.get("device") or "cpu"),
                output_dir=Path(str(output)) if output else None,
                model_card=dict(raw.get("model_card") or {}),
            )
        except (KeyError, TypeError) as error:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"model request lacks {error}") from None

    def write(self, path: Path) -> Path:
        """Writes the request file; returns its path."""
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")
        return path


def read_request(path: Path) -> ModelRequest:
    """Reads a request file written by :meth:`ModelRequest.write`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"cannot read model request {path}: {error}"
        ) from None
    if not isinstance(raw, dict):
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"model request {path} is not a JSON object")
    return ModelRequest.from_json(raw)


@dataclass(frozen=True)
class GenerateParams:
    """One chat turn to generate.

    Attributes:
        messages: the conversation, ``{"role": "user"|"assistant", "content": ...}``, ending with a user turn.
        max_new_tokens: cap on generated tokens per answer.
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass.
        top_k: sampling keeps this many most likely tokens (0: all).
        seed: seeds sampling (None: not reproducible).
        compare: also answer with the base model (the adapter disabled).
    """

    messages: tuple[tuple[str, str], ...]
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K
    seed: int | None = None
    compare: bool = False

    def to_json(self) -> dict[str, Any]:
        """The params' JSON object."""
        return {
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "compare": self.compare,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> GenerateParams:
        """Reads params back (written by :meth:`to_json`)."""
        seed = raw.get("seed")
        return cls(
            messages=tuple((str(m["role"]), str(m["content"])) for m in raw["messages"]),
            max_new_tokens=int(raw["max_new_tokens"]),
            temperature=float(raw["temperature"]),
            top_p=float(raw["top_p"]),
            top_k=int(raw["top_k"]),
            seed=None if seed is None else int(seed),
            compare=bool(raw.get("compare", False)),
        )


def encode_line(message: dict[str, Any]) -> bytes:
    """One protocol line."""
    return (json.dumps(message, ensure_ascii=False) + "\n").encode("utf-8")


def decode_line(line: bytes) -> dict[str, Any]:
    """Parses one protocol line; an unreadable one becomes an ``error`` message."""
    try:
        value = json.loads(line)
    except ValueError:
        return {
            "type": "error",
            "code": ErrorCode.INTERNAL.value,
            "message": f"unreadable line {line[:200]!r}",
        }
    if not isinstance(value, dict) or value.get("type") not in MESSAGE_TYPES:
        return {
            "type": "error",
            "code": ErrorCode.INTERNAL.value,
            "message": f"unexpected line {line[:200]!r}",
        }
    return value
