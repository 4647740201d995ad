"""One row per parallel strategy: trained tokens/s and peak memory per process of a real worker job.

On a machine without GPUs it runs ``--processes`` CPU processes (gloo) on ``builtin:tiny-qwen3``: a
CPU proxy of the strategies' relative cost, not GPU figures. On a lent GPU machine pass
``--device cuda --strategy sharded_data_parallel`` (and ``--processes`` up to the GPUs there).
``hybrid_parallel`` always runs 4 processes (2 tensor-parallel pairs × FSDP2, its smallest 2-D mesh;
its row says so); on a machine with fewer GPUs its row reads "skipped: needs ≥ 4 GPUs".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAINABLE = (
    "data_parallel",
    "sharded_data_parallel",
    "model_parallel",
    "pipeline_parallel",
    "hybrid_parallel",
)
# Strategies that need more processes than ``--processes``: hybrid's 2-D mesh is 2 tensor-parallel
# pairs × FSDP2 across them (its row says it ran with 4).
MIN_PROCESSES = {"hybrid_parallel": 4}
# Extra ``parallel`` keys per strategy.
PARALLEL_KEYS = {"hybrid_parallel": "  tensor_parallel_size: 2\n"}
CONFIG = """\
model:
  model_name: builtin:tiny-qwen3
training:
  max_steps: {steps}
  per_device_train_batch_size: 2
  gradient_accumulation_steps: 1
  logging_steps: 1
  save_strategy: "no"
  max_seq_length: 512
  eval_sample_size: 0
  max_new_tokens: 2
lora:
  rank: 8
  alpha: 16
  dropout: 0.0
data:
  train_split_ratio: 0.9
  eval_split_ratio: 0.1
parallel:
  strategy: {strategy}
  world_size: {processes}
  enable_distributed: {distributed}
"""


def write_records(path: Path, count: int) -> None:
    lines = []
    for i in range(count):
        record = {
            "instruction": f"SM4 的轮函数在分组密码中起什么作用？（第 {i} 题）",
            "input": "",
            "output": "SM4 用 32 轮非线性迭代，每轮的轮函数混合 S 盒与线性变换，使密文依赖每一位密钥。"
            * (1 + i % 3),
            "thinking": "<thinking>先回忆 SM4 的结构，再说明轮函数的扩散与混淆。</thinking>",
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def gpu_count() -> int:
    """CUDA devices visible here (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_strategy(strategy: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    processes = max(args.processes, MIN_PROCESSES.get(strategy, 1))
    if args.device == "cuda" and processes > gpu_count():
        # One process per GPU: a 2-D mesh of 4 cannot be made on fewer GPUs.
        return {"strategy": strategy, "processes": processes, "skipped": f"needs ≥ {processes} GPUs"}
    data = root / "records.jsonl"
    if not data.exists():
        write_records(data, args.samples)
    config = CONFIG.format(
        steps=args.steps,
        strategy=strategy,
        processes=processes,
        distributed=str(processes > 1).lower(),
    ) + PARALLEL_KEYS.get(strategy, "")
    output = root / strategy
    spec = {
        "job_id": f"bench-{strategy}",
        "pipeline_id": f"bench-{strategy}",
        "data_path": str(data),
        "data_name": "records.jsonl",
        "config_yaml": config,
        "config_name": "config.yaml",
        "output_dir": str(output),
        "state_dir": str(root / "state"),
        "dry_run": False,
        "resume": None,
        "device": args.device,
        "allow_remote_code": False,
        "events_path": str(root / f"{strategy}.jsonl"),
    }
    spec_path = root / f"{strategy}-spec.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), env.get("PYTHONPATH", "")])
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes)]
        command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
    command += ["-m", "cryptotune_daemon.worker", "--spec", str(spec_path)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{strategy} failed:\n{completed.stderr[-3000:]}")
    report = json.loads((output / "report.json").read_text(encoding="utf-8"))
    return {
        "strategy": strategy,
        "processes": processes,
        "device": args.device,
        "mesh": report.get("mesh"),
        "tokens_per_second": report["tokens_per_second"],
        "peak_memory_mb": report["peak_memory_mb"],
        "final_loss": report["train_loss_last"],
    }


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    proxy = "CPU proxy: " if args.device == "cpu" else ""
    what = "CPU processes (gloo, 1 torch thread each)" if args.device == "cpu" else "GPUs"
    lines = [
        f"{proxy}{args.processes} {what} (hybrid_parallel: 4, its smallest 2-D mesh), "
        f"`builtin:tiny-qwen3`, {args.steps} steps of micro-batch 2 per process, LoRA r=8. Peak memory is "
        "the peak of rank 0's process (RSS on CPUs, allocated memory on GPUs). Tensor-parallel ranks "
        "share samples, so model_parallel and hybrid_parallel train fewer samples per step.",
        "",
        "| strategy | processes | mesh | trained tokens/s | peak memory per process MB | final loss |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['strategy']} | {row['processes']} | skipped: {row['skipped']} | | | |")
            continue
        lines.append(
            f"| {row['strategy']} | {row['processes']} | {json.dumps(row['mesh'])} | "
            f"{row['tokens_per_second']:,.0f} | "
            f"{row['peak_memory_mb']:,.0f} | {row['final_loss']:.4f} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--strategy", action="append", choices=TRAINABLE, help="repeatable; default: all")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="ct-bench-strategies-") as directory:
        rows = [run_strategy(s, args, Path(directory)) for s in args.strategy or TRAINABLE]
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows}, indent=1), encoding="utf-8")
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
