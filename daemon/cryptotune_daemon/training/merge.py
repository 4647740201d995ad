"""Merged export: the base model with the adapter merged in (in fp32, then cast), for plain transformers.

Writes safetensors shards, the tokenizer files with the official Qwen3-Thinking-2507 chat template,
``generation_config.json`` with the model card's sampling values and a short model card (README.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from cryptotune_daemon.training.model_request import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    ModelRequest,
)
from cryptotune_daemon.training.models import load_base_model, resolve_model
from cryptotune_daemon.training.trainer import precision_dtype

MAX_SHARD_SIZE = "2GB"
MODEL_CARD = "README.md"
# Qwen3's special ids: <|endoftext|> (bos, pad) and <|im_end|> (end of a chat turn).
_END_OF_TEXT_ID = 151643
_END_OF_TURN_ID = 151645

# (phase, done, total)
Progress = Callable[[str, int, int], None]

PHASES = ("loading base", "loading adapter", "merging", "casting", "writing shards", "writing tokenizer")


def merged_dtype(precision: str) -> torch.dtype:
    """The merged weights' dtype: the training precision (bf16 when trained in bf16)."""
    return precision_dtype(precision)


def generation_config(tokenizer: Any) -> dict[str, Any]:
    """``generation_config.json``: the model card's sampling values and Qwen3's stop tokens."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    end_of_turn = _END_OF_TURN_ID if end_of_turn is None else int(end_of_turn)
    end_of_text = _END_OF_TEXT_ID if end_of_text is None else int(end_of_text)
    return {
        "bos_token_id": end_of_text,
        "do_sample": True,
        "eos_token_id": [end_of_turn, end_of_text],
        "pad_token_id": end_of_text,
        "temperature": DEFAULT_TEMPERATURE,
        "top_k": DEFAULT_TOP_K,
        "top_p": DEFAULT_TOP_P,
    }


def _figure(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(facts: Mapping[str, Any], dtype: torch.dtype) -> str:
    """A short README for the merged model: base, data, training and the report's before/after figures."""
    report: Mapping[str, Any] = facts.get("report") or {}
    base: Mapping[str, Any] = report.get("base") or {}
    rows = [
        ("Eval loss", base.get("eval_loss"), report.get("eval_loss")),
        ("Perplexity", base.get("perplexity"), report.get("perplexity")),
        ("Thinking-format rate", base.get("thinking_format_rate"), report.get("thinking_format_rate")),
        ("Crypto-term recall", base.get("term_recall"), report.get("crypto_term_recall")),
        ("Length-cap rate", base.get("length_cap_rate"), report.get("length_cap_rate")),
    ]
    lines = [
        "---",
        f"base_model: {facts.get('base_model')}",
        "library_name: transformers",
        "tags: [qwen3, lora, merged, cryptotune]",
        "---",
        "",
        f"# {facts.get('pipeline_id')} (merged)",
        "",
        f"`{facts.get('base_model')}` with the cryptotune LoRA adapter of pipeline "
        f"`{facts.get('pipeline_id')}` "
        f"merged in (merged in float32, stored as {str(dtype).removeprefix('torch.')}).",
        "",
        f"- Data: `{facts.get('data_name')}` (sha256 {facts.get('data_digest') or '–'}), "
        f"{_figure(report.get('train_samples'))} training / "
        f"{_figure(report.get('eval_samples'))} eval records",
        f"- LoRA: rank {facts.get('lora_rank')}, alpha {facts.get('lora_alpha')}, "
        f"targets {', '.join(facts.get('lora_targets') or [])}",
        f"- Steps: {_figure(report.get('steps'))}, precision {report.get('precision') or '–'}",
        "",
        "## Evaluation (same eval split)",
        "",
        "| | base | fine-tuned |",
        "|---|---|---|",
        *(f"| {name} | {_figure(b)} | {_figure(t)} |" for name, b, t in rows),
        "",
        "## Use",
        "",
        "The chat template is the official Qwen3-Thinking-2507 one: the generation prompt ends with "
        "`<think>\\n`, so the model writes its reasoning, `</think>`, then the answer. "
        "`generation_config.json` holds the model card's sampling values "
        f"(temperature {DEFAULT_TEMPERATURE}, top-p {DEFAULT_TOP_P}, top-k {DEFAULT_TOP_K}).",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained('.')",
        "model = AutoModelForCausalLM.from_pretrained('.')",
        "```",
        "",
        "vLLM: `vllm serve DIR --reasoning-parser deepseek_r1`.",
        "",
    ]
    return "\n".join(lines)


def merge_and_save(request: ModelRequest, progress: Progress) -> list[Path]:
    """Merges the job's adapter into its base model and writes the export to ``request.output_dir``.

    Returns the files written.
    """
    import peft
    from transformers import AutoTokenizer

    from cryptotune_daemon.data.tokenizer import chat_template

    assert request.output_dir is not None
    target = request.output_dir
    target.mkdir(parents=True, exist_ok=True)
    total = len(PHASES)
    cpu = torch.device("cpu")
    progress(PHASES[0], 0, total)
    source = resolve_model(
        request.model_name,
        trust_remote_code=request.trust_remote_code,
        allow_remote_code=request.trust_remote_code,
        revision=request.revision,
    )
    base = load_base_model(source, dtype=torch.float32, device=cpu)
    progress(PHASES[1], 1, total)
    model: Any = peft.PeftModel.from_pretrained(base, str(request.adapter_dir))
    progress(PHASES[2], 2, total)
    merged: Any = model.merge_and_unload()
    progress(PHASES[3], 3, total)
    dtype = merged_dtype(request.precision)
    merged = merged.to(dtype=dtype)
    merged.config.use_cache = True
    progress(PHASES[4], 4, total)
    merged.save_pretrained(str(target), safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    progress(PHASES[5], 5, total)
    tokenizer: Any = AutoTokenizer.from_pretrained(str(request.adapter_dir), local_files_only=True)
    tokenizer.chat_template = chat_template()
    tokenizer.save_pretrained(str(target))
    (target / "generation_config.json").write_text(
        json.dumps(generation_config(tokenizer), indent=2) + "\n", encoding="utf-8"
    )
    (target / MODEL_CARD).write_text(model_card(request.model_card, dtype), encoding="utf-8")
    progress("done", total, total)
    return sorted(p for p in target.rglob("*") if p.is_file())
