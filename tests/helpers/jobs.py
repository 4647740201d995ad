"""Jobs through a real daemon in tests: the bundled sample's records, a small config, waiting for the end."""

from __future__ import annotations

import time
from pathlib import Path

from cryptotune import Client

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "client" / "cryptotune" / "examples" / "crypto_qa_zh.jsonl"

CONFIG = """
model:
  model_name: builtin:tiny-qwen3
  trust_remote_code: false
training:
  num_train_epochs: {epochs}
  per_device_train_batch_size: 4
  gradient_accumulation_steps: 1
  learning_rate: 5.0e-3
  warmup_ratio: 0.0
  lr_scheduler_type: constant
  bf16: false
  save_steps: {save_steps}
  eval_strategy: "no"
  logging_steps: 1
  max_seq_length: {max_seq_length}
  max_steps: {max_steps}
  eval_sample_size: 2
  max_new_tokens: 8
lora:
  rank: 8
  alpha: 16
  dropout: 0.0
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
data:
  train_split_ratio: 0.75
  eval_split_ratio: 0.25
parallel:
  strategy: data_parallel
  world_size: {world_size}
  enable_distributed: {distributed}
"""


def write_config(
    path: Path,
    *,
    epochs: int = 1,
    max_steps: int = -1,
    save_steps: int = 5,
    max_seq_length: int = 1024,
    world_size: int = 1,
) -> Path:
    path.write_text(
        CONFIG.format(
            epochs=epochs,
            max_steps=max_steps,
            save_steps=save_steps,
            max_seq_length=max_seq_length,
            world_size=world_size,
            distributed="true" if world_size > 1 else "false",
        )
    )
    return path


def write_data(path: Path, count: int = 24) -> Path:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:count]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_terminal(client: Client, job: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get_job(job).state
        if state in ("succeeded", "failed", "cancelled"):
            return state
        time.sleep(0.5)
    raise TimeoutError(f"job {job} did not finish")
