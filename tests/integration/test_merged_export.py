"""Merged export of a job trained on a local Qwen3-shaped model directory: plain transformers loads it, its
logits are the base's plus the adapter's, and its chat template renders exactly our training text."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptotune import Client
from cryptotune.types import ExportProgress
from tests.helpers.jobs import CONFIG, wait_terminal, write_data
from tests.integration.conftest import RunningDaemon, short_tmp_dir, start_daemon, stop_daemon

PROMPTS = ("什么是SM4？", "RSA 的安全性基于什么？", "Explain AES-GCM in one line.")


@pytest.fixture
def local_daemon() -> Iterator[tuple[RunningDaemon, Path]]:
    root = short_tmp_dir()
    daemon = start_daemon(root / "state")
    try:
        yield daemon, root
    finally:
        stop_daemon(daemon)
        shutil.rmtree(root, ignore_errors=True)


def write_local_model(directory: Path) -> Path:
    """A small Qwen3-shaped model with the real Qwen3 tokenizer, written with save_pretrained."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from cryptotune_daemon.data.tokenizer import build_qwen3_tokenizer

    torch.manual_seed(5)
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    Qwen3ForCausalLM(config).save_pretrained(str(directory))
    build_qwen3_tokenizer().save_pretrained(str(directory))
    return directory


@pytest.mark.slow
def test_merged_export_equals_base_plus_adapter_and_loads_with_plain_transformers(
    local_daemon: tuple[RunningDaemon, Path],
) -> None:
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cryptotune_daemon.data.records import Record
    from cryptotune_daemon.data.template import render_prompt, render_record

    daemon, root = local_daemon
    model_dir = write_local_model(root / "qwen3-small")
    config = CONFIG.format(
        epochs=1, max_steps=3, save_steps=5, max_seq_length=1024, world_size=1, distributed="false"
    ).replace("builtin:tiny-qwen3", str(model_dir))
    (root / "config.yaml").write_text(config)
    with Client(daemon.address) as client:
        job = client.submit(
            write_data(root / "data.jsonl", count=12),
            root / "config.yaml",
            output_dir=root / "out",
            pipeline_id="merge-1",
        )
        assert wait_terminal(client, job.job_id) == "succeeded", daemon.log()
        steps: list[ExportProgress] = []
        written = client.export("merge-1", root / "merged", merged=True, on_progress=steps.append)
    merged_dir = root / "merged"
    names = {p.name for p in written}
    assert {
        "config.json",
        "generation_config.json",
        "README.md",
        "tokenizer.json",
        "chat_template.jinja",
    } <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert [s.phase for s in steps if s.total][:3] == ["loading base", "loading adapter", "merging"]
    generation = json.loads((merged_dir / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"], generation["top_k"]) == (0.6, 0.95, 20)
    card = (merged_dir / "README.md").read_text()
    assert str(model_dir) in card and "data.jsonl" in card and "| Eval loss |" in card

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    assert merged.dtype == torch.float32  # trained in fp32
    reference = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(model_dir)), str(root / "out" / "adapter")
    ).eval()
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )["input_ids"]
            assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4, rtol=0)
        output = merged.generate(ids, max_new_tokens=5, do_sample=False)
        assert output.shape[1] > ids.shape[1]

    record = Record(
        index=0,
        line=1,
        instruction="什么是SM4？",
        input="",
        output="SM4是分组密码。",
        reasoning="用户问SM4。",
        has_thinking=True,
    )
    conversation = [
        {"role": "user", "content": record.instruction},
        {"role": "assistant", "content": record.output, "reasoning_content": record.reasoning},
    ]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == render_record(record).text
    assert tokenizer.apply_chat_template(
        conversation[:1], tokenize=False, add_generation_prompt=True
    ) == render_prompt(record.instruction)
