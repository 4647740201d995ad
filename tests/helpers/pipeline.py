"""The worker pipeline in tests: small records, configs and job specs, and the events a run wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cryptotune_daemon.worker.pipeline import Pipeline
from cryptotune_daemon.worker.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
TERMS = [
    ("AES", "对称加密", "分组密码"),
    ("RSA", "公钥加密", "大整数分解"),
    ("SM2", "数字签名", "椭圆曲线"),
    ("SM3", "杂凑函数", "消息摘要"),
    ("SM4", "分组密码", "轮函数"),
    ("HMAC", "消息认证", "密钥"),
    ("ECDH", "密钥交换", "椭圆曲线"),
    ("GCM", "认证加密", "计数器模式"),
]

BASE_CONFIG = """\
model:
  model_name: builtin:tiny-qwen3
training:
  max_steps: {steps}
  per_device_train_batch_size: 2
  gradient_accumulation_steps: 1
  learning_rate: {lr}
  lr_scheduler_type: linear
  warmup_ratio: 0.1
  logging_steps: 1
  save_steps: {save_steps}
  eval_steps: 3
  max_seq_length: {max_seq_length}
  eval_sample_size: 2
  max_new_tokens: 6
  seed: 11
lora:
  rank: 4
  alpha: 8
  dropout: 0.1
data:
  train_split_ratio: 0.75
  eval_split_ratio: 0.25
"""


def write_records(path: Path, count: int = 16, *, extra: list[str] | None = None) -> Path:
    """Small Chinese cryptography Q&A records with reasoning, terms and difficulty."""
    lines = []
    for i in range(count):
        term, topic, detail = TERMS[i % len(TERMS)]
        record = {
            "instruction": f"{term} 在{topic}中起什么作用？（第 {i} 题）",
            "input": "",
            "output": f"{term} 用于{topic}，其安全性依赖于{detail}。",
            "thinking": f"<thinking>先回忆 {term} 的定义，再说明它与{detail}的关系。</thinking>",
            "crypto_terms": [term, detail],
            "difficulty": i % 4 + 1,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    lines.extend(extra or [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_spec(
    root: Path,
    *,
    data: Path,
    config: str,
    output: Path | None = None,
    dry_run: bool = False,
    resume: dict[str, Any] | None = None,
    events: str = "events.jsonl",
) -> dict[str, Any]:
    return {
        "job_id": f"job-{events}",
        "pipeline_id": "pipe-1",
        "data_path": str(data),
        "data_name": "records.jsonl",
        "config_yaml": config,
        "config_name": "config.yaml",
        "output_dir": str(output or root / "out"),
        "state_dir": str(root.parent / "state"),
        "dry_run": dry_run,
        "resume": resume,
        "device": "cpu",
        "allow_remote_code": False,
        "events_path": str(root / events),
    }


def config_text(
    *, steps: int = 8, lr: float = 0.01, save_steps: int = 2, max_seq_length: int = 512, **_: Any
) -> str:
    return BASE_CONFIG.format(steps=steps, lr=lr, save_steps=save_steps, max_seq_length=max_seq_length)


def run_inprocess(spec: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    code = Pipeline(parse_spec(spec)).run()
    return code, read_events(Path(spec["events_path"]))


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def of(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == event_type]


def adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter_model.safetensors"))
