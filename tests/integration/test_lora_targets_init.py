"""The init stage checks a non-Qwen3 model's LoRA target modules against the loaded model's names."""

from __future__ import annotations

import json
from pathlib import Path


def test_the_init_stage_refuses_missing_modules_of_a_local_model(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from cryptotune_daemon.worker.pipeline import Pipeline
    from cryptotune_daemon.worker.spec import parse_spec

    model_dir = tmp_path / "tiny-llama"
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    spec = {
        "job_id": "job-1",
        "pipeline_id": "pipe-1",
        "data_path": str(data),
        "config_yaml": f"model:\n  model_name: {model_dir}\nlora:\n  target_modules: [q_proj, qkv_proj]\n",
        "output_dir": str(tmp_path / "out"),
        "state_dir": str(tmp_path / "state"),
        "dry_run": True,
        "events_path": str(tmp_path / "events.jsonl"),
    }
    assert Pipeline(parse_spec(spec)).run() != 0
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    (failed,) = [e["data"] for e in events if e["type"] == "failed"]
    assert failed["stage"] == "init"
    assert "no module named 'qkv_proj'" in failed["reason"] and "down_proj" in failed["reason"]
