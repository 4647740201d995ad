"""Proof on a real GPU: the whole GPU path in about five minutes, rehearsed on the CPU with tiny shapes.

Run through ``bench/gpu_proof.sh [--rehearse] [--out DIR]`` (it installs the wheels a lent machine lacks
and sets ``PYTHONPATH``; see README "Proof on a lent GPU"). Writes ``DIR/gpu_proof.json``::

    {"device": "...", "rehearsal": bool, "parts": [{"name", "ok", "seconds", "skipped"?, ...figures}], ...}

and ``DIR/gpu_proof.log`` (everything the parts print, the daemon's log included). The parts, in order of
value, each in a fresh process (its own GPU memory, its own time limit; a crash or a hang fails that
part only, and the JSON is rewritten after every part, so a run killed at its limit keeps what it did):

1. ``daemon_job``: ``cryptotuned`` + ``cryptotune list-gpus`` (GPUs, memory, NVML figures, the
   recommendation) + a short job on a Qwen3-shaped model with random weights saved as a local model
   directory: bf16, packing, checkpoints, eval, report; on a GPU the ``gpu_sample`` events (memory and
   utilisation) must be there.
2. ``throughput``: ``bench/train_throughput.py``'s variants a (transformers Trainer + peft), b (TRL
   SFTTrainer, padding-free) and c (cryptotune) at Qwen3-4B's shape, same data and effective batch,
   about 30 optimiser steps each: trained tokens/s, peak memory, MFU (:func:`train_flops`).
3. ``oom_recovery``: the planner picks the micro-batch; after the checkpoint at step 2 the process's GPU
   memory is capped (``torch.cuda.set_per_process_memory_fraction``) between what that micro-batch
   and half of it need, so step 3 runs out of memory for real; the trainer must halve the micro-batch,
   continue from the checkpoint and finish. The rehearsal injects the OOM through the project's
   fault-injection seam instead (:func:`oom_injection`, the only place this script touches it).
4. ``strategies``: a daemon job per parallel strategy at world size 1 (``--strategy``, default every
   strategy the config schema names). On a GPU a strategy the daemon refuses is listed as skipped
   with the daemon's reason; a rehearsal runs only what exists. ``hybrid_parallel`` needs a 2-D mesh
   (tensor-parallel groups of 2 × FSDP2 across at least 2 groups), which one process cannot make: it
   is listed as "skipped: needs ≥ 4 GPUs" (``bench/strategies.py --processes 4`` runs it on CPUs).
5. ``long_sequences``: one packed row of 16,384 tokens at Qwen3-4B's shape, with and without gradient
   checkpointing: step time, peak memory, and the planner's estimate beside the measured peak.

A part is ``ok`` when its checks pass; ``skipped`` (with ``ok: false``) only on a GPU run: no GPU, or
the time budget spent. The exit code is 0 whenever the script ran to its end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PARTS = ("daemon_job", "throughput", "oom_recovery", "strategies", "long_sequences")
RESULT_SUFFIX = ".result.json"
DAEMON_PIDS = "daemon.pids"
MB = 2**20
SEED = 1234
LORA_RANK = 16
# Dense bf16 tensor-core peaks from NVIDIA's data sheets (FLOP/s), matched on the device name in order.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H20", 148e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


# -- what a run trains: GPU sizes or the rehearsal's tiny ones --


@dataclass(frozen=True)
class Profile:
    """Shapes, sizes and time limits of one run (:data:`GPU` or :data:`REHEARSAL`).

    Shapes are keys of ``train_throughput.SHAPES`` (Qwen3 layouts, random weights).
    """

    job_shape: str
    job_steps: int
    job_batch: tuple[str, str]
    job_timeout_s: int
    throughput_shape: str
    throughput_samples: int
    throughput_batch: int
    oom_shape: str
    oom_sample_tokens: int
    oom_effective_batch: int
    oom_steps: int
    strategy_steps: int
    long_shape: str
    long_row_tokens: int
    long_samples_per_row: int
    long_steps: int
    budget_s: int
    part_timeout_s: dict[str, int]


GPU = Profile(
    job_shape="qwen3-0.6b",
    job_steps=16,
    job_batch=("auto", "auto"),  # micro-batch and accumulation: the planner sizes them
    job_timeout_s=150,
    throughput_shape="qwen3-4b",
    throughput_samples=480,  # 30 optimiser steps of 16 samples
    throughput_batch=16,
    oom_shape="qwen3-0.6b",
    oom_sample_tokens=1024,
    oom_effective_batch=8,
    oom_steps=4,
    strategy_steps=6,
    long_shape="qwen3-4b",
    long_row_tokens=16384,
    long_samples_per_row=8,
    long_steps=3,
    budget_s=300,
    part_timeout_s={
        "daemon_job": 170,
        "throughput": 170,
        "oom_recovery": 90,
        "strategies": 120,
        "long_sequences": 120,
    },
)
REHEARSAL = Profile(
    job_shape="tiny",
    job_steps=4,
    job_batch=("2", "1"),
    job_timeout_s=400,
    throughput_shape="tiny",
    throughput_samples=4,  # 2 optimiser steps of 2 samples
    throughput_batch=2,
    oom_shape="tiny",
    oom_sample_tokens=64,
    oom_effective_batch=4,
    oom_steps=4,
    strategy_steps=2,
    long_shape="tiny",
    long_row_tokens=512,
    long_samples_per_row=8,
    long_steps=2,
    budget_s=0,
    part_timeout_s=dict.fromkeys(PARTS, 900),
)


@dataclass(frozen=True)
class Context:
    """What a part's process gets: the run's kind, a scratch directory shared by the parts, options."""

    rehearse: bool
    work: Path
    strategies: tuple[str, ...]

    @property
    def profile(self) -> Profile:
        return REHEARSAL if self.rehearse else GPU

    @property
    def device(self) -> str:
        return "cpu" if self.rehearse else "cuda"


def log(message: str) -> None:
    """A line in the log (a part's stdout and stderr go to gpu_proof.log)."""
    print(f"[gpu_proof {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def load_bench(name: str) -> ModuleType:
    """Imports ``bench/NAME.py`` by path (``bench/daemon.py`` would otherwise clash with python-daemon)."""
    module_name = f"cryptotune_bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


# -- shared helpers of the parts --


def lora_targets() -> tuple[str, ...]:
    return tuple(load_bench("train_throughput").LORA_TARGETS)


def model_facts(shape: str) -> Any:
    """The planner's :class:`ModelFacts` of a Qwen3 shape (parameters counted on the meta device)."""
    import torch
    from transformers import Qwen3ForCausalLM

    from cryptotune_daemon.training.models import ModelFacts

    tt = load_bench("train_throughput")
    with torch.device("meta"):
        model = Qwen3ForCausalLM(tt.model_config(shape))
    sizes = tt.SHAPES[shape]
    return ModelFacts(
        num_parameters=sum(p.numel() for p in model.parameters()),
        hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"],
        num_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"],
        num_key_value_heads=sizes["num_key_value_heads"],
        head_dim=sizes["head_dim"],
        vocab_size=tt.VOCAB,
    )


def synthetic_examples(count: int, length: int, seed: int = SEED) -> list[Any]:
    """``count`` samples of exactly ``length`` random tokens, the first quarter a masked prompt."""
    from cryptotune_daemon.constants import IGNORE_INDEX
    from cryptotune_daemon.training.dataset import Example

    rng = random.Random(seed)
    prompt = length // 4
    examples = []
    for index in range(count):
        ids = tuple(rng.randrange(1000, 150000) for _ in range(length))
        labels = (IGNORE_INDEX,) * prompt + ids[prompt:]
        examples.append(
            Example(index=index, line=index + 1, input_ids=ids, labels=labels, prompt_tokens=prompt)
        )
    return examples


def trainer_settings(
    *,
    steps: int,
    micro_batch: int,
    accumulation: int,
    precision: str,
    gradient_checkpointing: bool,
    max_seq_length: int,
    save_steps: int = 0,
) -> Any:
    from cryptotune_daemon.training.trainer import TrainerSettings

    return TrainerSettings(
        learning_rate=1e-4,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=1.0,
        total_steps=steps,
        micro_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
        seed=SEED,
        lora_rank=LORA_RANK,
        lora_alpha=2.0 * LORA_RANK,
        lora_dropout=0.0,
        lora_target_modules=lora_targets(),
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps,
        eval_strategy="no",
        packing=True,
        max_seq_length=max_seq_length,
    )


def trainer(
    ctx: Context, shape: str, examples: list[Any], settings: Any, output_dir: Path, emit: Any, **seam: Any
) -> Any:
    """A cryptotune ``LoraTrainer`` on a freshly built random model of ``shape`` (bf16 on CUDA)."""
    import torch

    from cryptotune_daemon.training.checkpoints import Hashes
    from cryptotune_daemon.training.distributed import DistContext
    from cryptotune_daemon.training.trainer import LoraTrainer

    tt = load_bench("train_throughput")
    return LoraTrainer(
        base_model=tt.build_model(shape, ctx.device),
        train_examples=examples,
        eval_examples=[],
        settings=settings,
        hashes=Hashes(data="0" * 64, config="0" * 64, tokenizer="0" * 64),
        output_dir=output_dir,
        dist=DistContext(device=torch.device(ctx.device)),
        pad_token_id=tt.PAD_ID,
        emit=emit,
        **seam,
    )


def release(done: Any) -> None:
    """Frees a trainer's model, optimiser and cached GPU memory."""
    import gc

    import torch

    done.release()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def precision(ctx: Context) -> str:
    return "fp32" if ctx.rehearse else "bf16"


def mb(value: float) -> float:
    return round(value / MB, 1)


# -- the fault-injection seam --


def oom_injection(at_step: int, fits_micro_batch: int) -> dict[str, Any]:
    """The rehearsal's out-of-memory: keyword arguments for ``LoraTrainer`` that make optimiser step
    ``at_step`` raise ``torch.OutOfMemoryError`` while the micro-batch is larger than ``fits_micro_batch``.

    This is the only place the script uses the project's fault-injection seam (today the trainer's
    ``oom_test_hook``, which the daemon's worker fills from ``CRYPTOTUNE_TEST_HOOK_INJECT_OOM``). A GPU
    run never calls it: its out-of-memory is real.
    """
    from cryptotune_daemon.faults import OomTestHook

    return {"oom_test_hook": OomTestHook(at_step=at_step, fits_micro_batch=fits_micro_batch)}


# -- part 1: the daemon path --


def random_model_dir(ctx: Context, shape: str) -> Path:
    """A local model directory (config, bf16 safetensors, the Qwen3 tokenizer) with random weights.

    Built once per run in the scratch directory and shared by the parts that need it.
    """
    target = ctx.work / "models" / shape
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import Qwen3ForCausalLM

    from cryptotune_daemon.data.tokenizer import load_tokenizer

    tt = load_bench("train_throughput")
    started = time.monotonic()
    partial = target.with_name(f".{shape}.{os.getpid()}")
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM._from_config(tt.model_config(shape), dtype=torch.bfloat16)
    model.save_pretrained(str(partial))
    load_tokenizer("builtin:tiny-qwen3", ctx.work / "tokenizer-cache").save_pretrained(str(partial))
    partial.replace(target)
    log(f"saved a random {shape} model in {target} in {time.monotonic() - started:.1f} s")
    return target


def job_config(model_dir: Path, steps: int, batch: tuple[str, str], strategy: str = "data_parallel") -> str:
    targets = ", ".join(lora_targets())
    half = max(1, steps // 2)
    return f"""\
model:
  model_name: {model_dir}
training:
  max_steps: {steps}
  per_device_train_batch_size: {batch[0]}
  gradient_accumulation_steps: {batch[1]}
  bf16: true
  learning_rate: 1.0e-4
  logging_steps: 1
  save_steps: {half}
  eval_steps: {half}
  max_seq_length: 1024
  eval_sample_size: 2
  max_new_tokens: 16
  seed: 7
lora:
  rank: {LORA_RANK}
  alpha: {2 * LORA_RANK}
  target_modules: [{targets}]
data:
  train_split_ratio: 0.9
  eval_split_ratio: 0.1
parallel:
  strategy: {strategy}
  world_size: 1
  enable_distributed: true
"""


@contextlib.contextmanager
def daemon(work: Path) -> Iterator[Any]:
    """A ``cryptotuned`` from this checkout on a temp state dir and unix socket; its log goes to ours."""
    bench_daemon = load_bench("daemon")
    root = Path(tempfile.mkdtemp(prefix="ctp-", dir="/tmp"))  # unix socket paths are short
    started = time.monotonic()
    running = None
    try:
        running = bench_daemon.Daemon(root, command=[sys.executable, "-m", "cryptotune_daemon.main"])
        # The daemon leads a session of its own: if this part runs out of time, the driver ends it by pid.
        with (work / DAEMON_PIDS).open("a", encoding="utf-8") as pids:
            pids.write(f"{running.process.pid}\n")
        log(f"cryptotuned serving at {running.address} after {time.monotonic() - started:.1f} s")
        yield running
    finally:
        if running is not None:
            running.stop()
        daemon_log = root / "daemon.log"
        if daemon_log.exists():
            log("---- daemon log ----\n" + daemon_log.read_text(errors="replace")[-20000:])
        for worker_log in sorted(root.glob("**/worker.log")):
            log(
                f"---- {worker_log.relative_to(root)} ----\n" + worker_log.read_text(errors="replace")[-8000:]
            )
        shutil.rmtree(root, ignore_errors=True)


def run_job(running: Any, config: str, output_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Submits a job, waits for its end, and returns its state, plan, events, report and files."""
    data = load_bench("train_throughput").DATA
    started = time.monotonic()
    with running.client() as client:
        job = client.submit(data, config, output_dir=output_dir)
        while not job.terminal:
            if time.monotonic() - started > timeout_s:
                client.cancel(job.job_id)
                raise TimeoutError(f"job {job.job_id} did not end within {timeout_s:.0f} s")
            time.sleep(0.5)
            job = client.get_job(job.job_id)
        seconds = time.monotonic() - started
        events = list(client.watch(job.job_id))
    report_path = output_dir / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    counts: dict[str, int] = {}
    for event in events:
        counts[event.type] = counts.get(event.type, 0) + 1
    samples = [g for e in events if e.type == "gpu_sample" for g in e.data.get("gpus", [])]
    checkpoints = sorted(p.name for p in (output_dir / "checkpoints").glob("step-*"))
    return {
        "job_id": job.job_id,
        "state": job.state,
        "failure_reason": job.failure_reason,
        "seconds": round(seconds, 1),
        "plan": {
            k: (job.plan or {}).get(k)
            for k in (
                "micro_batch_size",
                "gradient_accumulation_steps",
                "precision",
                "gradient_checkpointing",
                "packing",
                "memory_estimate_mb",
                "memory_budget_mb",
                "device",
            )
        },
        "event_counts": counts,
        "eval_losses": [e.data.get("eval_loss") for e in events if e.type == "eval"],
        "checkpoints": checkpoints,
        "report": {
            k: report.get(k)
            for k in (
                "steps",
                "eval_loss",
                "tokens_per_second",
                "peak_memory_mb",
                "precision",
                "device",
                "world_size",
                "thinking_format_rate",
                "generation_evaluated",
            )
        },
        "report_files": sorted(p.name for p in output_dir.glob("report*")),
        "gpu_samples": len(samples),
        "gpu_memory_used_mb_max": max((g.get("memory_used_mb", -1) for g in samples), default=None),
        "gpu_utilization_percent_max": max((g.get("utilization_percent", -1) for g in samples), default=None),
    }


def list_gpus(running: Any) -> dict[str, Any]:
    """``cryptotune list-gpus`` as a user runs it (a fresh CLI process), in JSON."""
    command = [
        sys.executable,
        "-m",
        "cryptotune.cli.main",
        "--address",
        running.address,
        "--no-autostart",
        "--json",
        "list-gpus",
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"cryptotune list-gpus exited with {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def part_daemon_job(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    model_dir = random_model_dir(ctx, p.job_shape)
    with daemon(ctx.work) as running:
        gpus = list_gpus(running)
        log(f"list-gpus: {json.dumps(gpus)}")
        job = run_job(
            running, job_config(model_dir, p.job_steps, p.job_batch), ctx.work / "daemon-job", p.job_timeout_s
        )
    log(f"job: {json.dumps(job)}")
    checks = {
        "list_gpus_recommends": bool(gpus.get("recommendation")),
        "job_succeeded": job["state"] == "succeeded",
        "packing": job["plan"]["packing"] is True,
        "all_steps": job["report"]["steps"] == p.job_steps,
        "checkpoints": len(job["checkpoints"]) >= 1 and job["event_counts"].get("checkpoint", 0) >= 1,
        "eval": any(loss is not None for loss in job["eval_losses"])
        and job["report"]["eval_loss"] is not None,
        "report": "report.json" in job["report_files"] and "report.md" in job["report_files"],
    }
    if not ctx.rehearse:
        listed = gpus.get("gpus") or []
        checks["gpu_listed"] = bool(listed) and all(g["memory_total_mb"] > 0 for g in listed)
        checks["nvml_figures"] = bool(listed) and all(
            g["utilization_percent"] >= 0 and g["temperature_c"] >= 0 for g in listed
        )
        checks["bf16"] = job["plan"]["precision"] == "bf16" and job["report"]["device"] == "cuda"
        checks["gpu_events"] = (
            job["gpu_samples"] >= 1
            and (job["gpu_memory_used_mb_max"] or 0) > 0
            and (job["gpu_utilization_percent_max"] or -1) >= 0
        )
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "model_shape": p.job_shape,
        "list_gpus": gpus,
        "job": job,
    }


# -- part 2: throughput against transformers Trainer and TRL --


def train_flops(shape: dict[str, int], vocab: int, lengths: list[int], lora_rank: int) -> float:
    """Model FLOPs of one LoRA training pass over samples of these lengths (the MFU numerator).

    Per sample of ``n`` tokens: ``4·n·(L·P_layer + h·V) + 6·n·L·P_lora + 6·L·d_q·n²``, where
    ``P_layer`` is one decoder layer's projection weights (q, k, v, o, gate, up, down), ``h·V`` the LM
    head, ``P_lora`` one layer's LoRA weights (rank × (in + out) on every projection) and ``d_q`` the
    query width. A frozen weight costs 2 FLOPs per token forward and 2 backward (the input gradient; it
    gets no weight gradient), a trained LoRA weight 6; causal attention costs ``2·n²·d_q`` per layer
    forward (QKᵀ and AV over half the square) and twice that backward. Every variant is credited the
    same FLOPs for the same samples (padding and prompt logits that a variant computes anyway are
    not useful work), so MFU ranks them exactly as their speed does.
    """
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    projections = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]
    per_layer = sum(i * o for i, o in projections)
    lora = sum(lora_rank * (i + o) for i, o in projections)
    per_token = 4 * (layers * per_layer + h * vocab) + 6 * layers * lora
    return float(sum(n * per_token + 6 * layers * q * n * n for n in lengths))


def peak_flops(device: str, device_name: str) -> tuple[float, str]:
    """The device's peak FLOP/s and where the figure comes from.

    CUDA: dense bf16 from the data sheet (:data:`PEAK_BF16_FLOPS`); otherwise (or an unknown GPU) a
    measured fp32 (CPU, one thread as the benchmark's variants) or bf16 (GPU) matrix product.
    """
    if device == "cuda":
        for key, value in PEAK_BF16_FLOPS:
            if key in device_name:
                return value, f"{key} dense bf16 data-sheet peak"
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    size = 1024 if device == "cpu" else 8192
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    runs = 0
    started = time.perf_counter()
    while runs < 3 or time.perf_counter() - started < 0.5:
        a @ b
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    rate = 2 * size**3 * runs / (time.perf_counter() - started)
    return rate, f"measured {size}³ {'fp32 one-thread' if device == 'cpu' else 'bf16'} matrix product"


def part_throughput(ctx: Context) -> dict[str, Any]:
    tt = load_bench("train_throughput")
    p = ctx.profile
    cache = ctx.work / "throughput-cache"
    common = [
        "--device",
        ctx.device,
        "--model-shape",
        p.throughput_shape,
        "--samples",
        str(p.throughput_samples),
        "--effective-batch",
        str(p.throughput_batch),
        "--micro-batch",
        str(p.throughput_batch),
        "--cache-dir",
        str(cache),
    ]
    variants: dict[str, dict[str, Any]] = {}
    machine = ""
    for key in ("a", "b", "c"):
        try:
            summary = tt.run_all(tt.parse([*common, "--variants", key]))
        except Exception as error:  # one failed variant must not hide the others
            log(f"throughput variant {key} failed: {error}")
            variants[key] = {"variant": tt.VARIANTS[key], "ok": False, "error": str(error)[-2000:]}
            continue
        machine = summary["machine"]
        variants[key] = {"variant": tt.VARIANTS[key], "ok": True, **summary["variants"][key]}
    examples, _ = tt.load_examples(p.throughput_samples, cache)
    lengths = [e.length for e in examples]
    flops = train_flops(tt.SHAPES[p.throughput_shape], tt.VOCAB, lengths, int(tt.LORA["r"]))
    peak, peak_source = peak_flops(ctx.device, machine)
    figures: dict[str, Any] = {}
    for key, result in variants.items():
        if not result["ok"]:
            figures[key] = result
            continue
        median_time = result["median_step_seconds"] * len(result["step_seconds"])
        figures[key] = {
            "variant": result["variant"],
            "ok": True,
            "steps": result["steps"],
            "seconds": round(result["seconds"], 2),
            "median_step_seconds": round(result["median_step_seconds"], 4),
            "trained_tokens_per_second": round(result["tokens_per_second"], 1),
            "trained_tokens_per_second_median_step": round(result["tokens_per_second_median_step"], 1),
            "tokens_per_second": round(sum(lengths) / result["seconds"], 1),
            "peak_memory_mb": mb(result["peak_memory_bytes"]),
            "final_loss": result["final_loss"],
            "mfu": round(flops / result["seconds"] / peak, 4),
            "mfu_median_step": round(flops / median_time / peak, 4),
        }
    return {
        "ok": all(v["ok"] for v in figures.values()),
        "machine": machine,
        "model_shape": p.throughput_shape,
        "samples": len(lengths),
        "tokens": sum(lengths),
        "effective_batch": p.throughput_batch,
        "micro_batch": p.throughput_batch,
        "flops": flops,
        "flops_formula": "per sample of n tokens: 4·n·(L·P_layer + h·V) + 6·n·L·P_lora + 6·L·d_q·n² "
        "(frozen weights 2+2 FLOPs per token, LoRA weights 6, causal attention 2·n²·d_q per layer "
        "forward and twice that backward); the same for every variant",
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "variants": figures,
    }


# -- part 3: a real out-of-memory, and the recovery --


def part_oom_recovery(ctx: Context) -> dict[str, Any]:
    import torch

    from cryptotune_daemon.training.oom import OomRecovery, train_with_oom_recovery
    from cryptotune_daemon.training.planner import PlanRequest, detect_device, plan_training

    tt = load_bench("train_throughput")
    p = ctx.profile
    examples = synthetic_examples(p.oom_effective_batch * p.oom_steps, p.oom_sample_tokens)
    facts = model_facts(p.oom_shape)
    device = detect_device(ctx.device)
    plan = plan_training(
        PlanRequest(
            micro_batch_size=None,
            gradient_accumulation_steps=None,
            gradient_checkpointing=False,
            fp16=None,
            bf16=True,
            num_train_epochs=1.0,
            max_steps=p.oom_steps,
            warmup_ratio=0.0,
            lora_rank=LORA_RANK,
            lora_target_modules=lora_targets(),
            effective_batch_size=p.oom_effective_batch,
            max_seq_length=p.oom_sample_tokens,
        ),
        facts,
        device,
        [e.length for e in examples],
    )
    micro = plan.micro_batch_size
    if micro < 2:
        raise RuntimeError(f"the planner chose micro-batch {micro}: nothing to halve ({plan.choice})")
    cap_after_step = 2
    settings = trainer_settings(
        steps=p.oom_steps,
        micro_batch=micro,
        accumulation=plan.gradient_accumulation_steps,
        precision=plan.precision,
        gradient_checkpointing=False,
        max_seq_length=p.oom_sample_tokens,
        save_steps=cap_after_step,
    )
    figures: dict[str, Any] = {
        "model_shape": p.oom_shape,
        "sample_tokens": p.oom_sample_tokens,
        "planned_micro_batch": micro,
        "planned_accumulation": plan.gradient_accumulation_steps,
        "plan_choice": plan.choice,
        "planner_estimate_mb": plan.memory_estimate_mb,
        "planner_breakdown": plan.memory_breakdown,
    }
    recoveries: list[OomRecovery] = []
    memory = tt.PeakMemory(ctx.device)

    def cap_gpu_memory() -> None:
        """Caps this process between what the planned micro-batch and half of it need (measured)."""
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        held = torch.cuda.memory_allocated()
        torch.cuda.empty_cache()
        cap = held + 0.75 * (peak - held)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(cap / total)
        torch.cuda.reset_peak_memory_stats()
        figures.update(
            measured_peak_mb=mb(peak),
            held_between_steps_mb=mb(held),
            memory_cap_mb=mb(cap),
            memory_cap_fraction=round(cap / total, 5),
        )
        log(f"capped GPU memory at {mb(cap)} MB (peak so far {mb(peak)} MB, held {mb(held)} MB)")

    def emit(event: str, data: Any) -> None:
        if event == "checkpoint" and data["step"] == cap_after_step and not ctx.rehearse and not recoveries:
            cap_gpu_memory()

    # The rehearsal's OOM goes through the seam; a GPU run's is real.
    seam = {} if not ctx.rehearse else oom_injection(cap_after_step + 1, micro // 2)
    output_dir = ctx.work / "oom"

    def build(current: Any) -> Any:
        return trainer(ctx, p.oom_shape, examples, current, output_dir, emit, **seam)

    def latest() -> Any:
        from cryptotune_daemon.training.checkpoints import newest_verified

        return newest_verified(output_dir, log)

    memory.start()
    started = time.monotonic()
    finished = train_with_oom_recovery(
        build, settings, resume=None, latest_checkpoint=latest, on_recovery=lambda r, _s: recoveries.append(r)
    )
    seconds = time.monotonic() - started
    state = finished.state
    if ctx.device == "cuda":
        torch.cuda.synchronize()
        figures["measured_peak_after_recovery_mb"] = mb(torch.cuda.max_memory_allocated())
        figures["cuda_ooms"] = int(torch.cuda.memory_stats().get("num_ooms", 0))
        torch.cuda.set_per_process_memory_fraction(1.0)
    else:
        figures["measured_peak_mb"] = mb(memory.stop())
        figures["oom_source"] = "fault-injection seam (rehearsal)"
    final_micro = finished.settings.micro_batch_size
    release(finished)
    figures.update(
        recoveries=[r.to_json() for r in recoveries],
        final_micro_batch=final_micro,
        steps=state.step,
        total_steps=p.oom_steps,
        train_seconds=round(seconds, 2),
        final_loss=state.loss_history[-1][1] if state.loss_history else None,
    )
    checks = {
        "recovered_once": len(recoveries) == 1,
        "halved": bool(recoveries) and recoveries[0].new_micro_batch == micro // 2 == final_micro,
        "resumed_from_checkpoint": bool(recoveries) and recoveries[0].resumed_from_step == cap_after_step,
        "finished": state.step == p.oom_steps,
    }
    if ctx.device == "cuda":
        checks["real_cuda_oom"] = figures["cuda_ooms"] >= 1
    return {"ok": all(checks.values()), "checks": checks, **figures}


# -- part 4: parallel strategies at world size 1 --


def schema_strategies() -> tuple[str, ...]:
    """Every ``parallel.strategy`` the config schema names, except ``auto`` (it picks one of them)."""
    import typing

    from cryptotune_daemon.config.schema import ParallelStrategy

    return tuple(s for s in typing.get_args(ParallelStrategy) if s != "auto")


# Strategies that mean something only with more processes than this part's world size of 1.
MIN_PROCESSES = {"hybrid_parallel": 4}


def part_strategies(ctx: Context) -> dict[str, Any]:
    from cryptotune.errors import CryptotuneError as ClientError

    p = ctx.profile
    names = ctx.strategies or schema_strategies()
    model_dir = random_model_dir(ctx, p.job_shape)
    results: list[dict[str, Any]] = []
    with daemon(ctx.work) as running:
        for name in names:
            if MIN_PROCESSES.get(name, 1) > 1:
                reason = (
                    f"skipped: needs ≥ {MIN_PROCESSES[name]} GPUs ({name} builds a 2-D mesh of "
                    "tensor-parallel groups × FSDP2 across them; this part runs world size 1)"
                )
                log(f"strategy {name}: {reason}")
                if not ctx.rehearse:  # a rehearsal lists only what it ran
                    results.append({"strategy": name, "world_size": 1, "ok": False, "skipped": reason})
                continue
            output_dir = ctx.work / f"strategy-{name}"
            try:
                job = run_job(
                    running,
                    job_config(model_dir, p.strategy_steps, p.job_batch, name),
                    output_dir,
                    p.job_timeout_s,
                )
            except ClientError as error:
                if ctx.rehearse:  # a rehearsal runs what exists
                    log(f"strategy {name}: refused by the daemon ({error.message}); not rehearsed")
                    continue
                results.append({"strategy": name, "ok": False, "skipped": error.message})
                continue
            except Exception as error:
                log(f"strategy {name} failed: {traceback.format_exc()}")
                results.append({"strategy": name, "ok": False, "error": f"{type(error).__name__}: {error}"})
                continue
            log(f"strategy {name}: {json.dumps(job)}")
            results.append(
                {
                    "strategy": name,
                    "world_size": job["report"]["world_size"],
                    "ok": job["state"] == "succeeded" and job["report"]["steps"] == p.strategy_steps,
                    "state": job["state"],
                    "failure_reason": job["failure_reason"],
                    "seconds": job["seconds"],
                    "steps": job["report"]["steps"],
                    "tokens_per_second": job["report"]["tokens_per_second"],
                    "peak_memory_mb": job["report"]["peak_memory_mb"],
                    "planner_estimate_mb": job["plan"]["memory_estimate_mb"],
                    "micro_batch_size": job["plan"]["micro_batch_size"],
                    "precision": job["plan"]["precision"],
                }
            )
    ran = [r for r in results if "skipped" not in r]
    return {
        "ok": bool(ran) and all(r["ok"] for r in ran),
        "model_shape": p.job_shape,
        "strategies": results,
    }


# -- part 5: a long packed row, with and without gradient checkpointing --


def part_long_sequences(ctx: Context) -> dict[str, Any]:
    import torch

    from cryptotune_daemon.training.models import uses_varlen_attention
    from cryptotune_daemon.training.planner import detect_device, estimate_memory, lora_parameter_count
    from cryptotune_daemon.training.trainer import TrainingOutOfMemory

    tt = load_bench("train_throughput")
    p = ctx.profile
    per_sample = p.long_row_tokens // p.long_samples_per_row
    examples = synthetic_examples(p.long_samples_per_row * p.long_steps, per_sample)
    facts = model_facts(p.long_shape)
    lora = lora_parameter_count(facts, LORA_RANK, lora_targets())
    budget = detect_device(ctx.device).memory_budget_mb
    runs = []
    for checkpointing in (True, False):
        clock = tt.StepClock()
        memory = tt.PeakMemory(ctx.device)
        memory.start()
        settings = trainer_settings(
            steps=p.long_steps,
            micro_batch=p.long_samples_per_row,
            accumulation=1,
            precision=precision(ctx),
            gradient_checkpointing=checkpointing,
            max_seq_length=p.long_row_tokens,
        )

        def emit(event: str, _data: Any, clock: Any = clock) -> None:
            if event == "progress":
                clock.tick()

        run = trainer(ctx, p.long_shape, examples, settings, ctx.work / f"long-{checkpointing}", emit)
        run.setup()
        row = run.collate_batch(examples[: p.long_samples_per_row])
        rows, width = (int(n) for n in row["input_ids"].shape)
        varlen = uses_varlen_attention(run.base_model)
        out_of_memory = False
        clock.start()
        try:
            run.train()
        except TrainingOutOfMemory as error:
            out_of_memory = True
            log(f"long row, gradient checkpointing {checkpointing}: {error.message}")
        peak = memory.stop()
        reserved = torch.cuda.max_memory_reserved() if ctx.device == "cuda" else None
        release(run)
        del run
        estimate = estimate_memory(
            facts,
            device=ctx.device,
            rows=rows,
            width=width,
            precision=precision(ctx),
            gradient_checkpointing=checkpointing,
            lora_parameters=lora,
            label_tokens=sum(e.label_tokens for e in examples[: p.long_samples_per_row]),
            varlen_attention=varlen,
        )
        timed = clock.seconds[1:] or clock.seconds
        median = statistics.median(timed) if timed else None
        runs.append(
            {
                "gradient_checkpointing": checkpointing,
                "ok": out_of_memory or len(clock.seconds) == p.long_steps,
                "out_of_memory": out_of_memory,
                "row_shape": [rows, width],
                "attention": "flash_attention varlen" if varlen else "sdpa, block-diagonal mask",
                "steps": len(clock.seconds),
                "step_seconds": [round(s, 3) for s in clock.seconds],
                "median_step_seconds": round(median, 3) if median else None,
                "tokens_per_second": round(width * rows / median, 1) if median else None,
                "measured_peak_mb": mb(peak),
                "measured_peak_reserved_mb": mb(reserved) if reserved is not None else None,
                "planner_estimate_mb": estimate.total,
                "planner_breakdown": estimate.describe(),
                "planner_budget_mb": budget,
                "planner_says_fits": estimate.total <= budget,
                "measured_over_estimate": round(peak / MB / estimate.total, 3),
            }
        )
        log(f"long row: {json.dumps(runs[-1])}")
    with_checkpointing = runs[0]
    return {
        # The row must train with checkpointing; without, running out of memory is a finding, not a failure.
        "ok": with_checkpointing["ok"]
        and not with_checkpointing["out_of_memory"]
        and all(r["ok"] for r in runs),
        "model_shape": p.long_shape,
        "row_tokens": p.long_row_tokens,
        "samples_in_row": p.long_samples_per_row,
        "memory_measured": "CUDA max_memory_allocated"
        if ctx.device == "cuda"
        else "peak RSS above the process's RSS before the model was built",
        "runs": runs,
    }


PART_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "daemon_job": part_daemon_job,
    "throughput": part_throughput,
    "oom_recovery": part_oom_recovery,
    "strategies": part_strategies,
    "long_sequences": part_long_sequences,
}


# -- the driver: one process per part --


def run_part_here(name: str, ctx: Context) -> int:
    """Runs one part in this process and writes its figures to the scratch directory."""
    started = time.monotonic()
    try:
        figures = PART_FUNCTIONS[name](ctx)
    except Exception as error:
        log(f"part {name} failed:\n{traceback.format_exc()}")
        figures = {"ok": False, "error": f"{type(error).__name__}: {error}"[-4000:]}
    figures.setdefault("part_process_seconds", round(time.monotonic() - started, 2))
    (ctx.work / f"{name}{RESULT_SUFFIX}").write_text(json.dumps(figures, default=str), encoding="utf-8")
    return 0


def gpu_description() -> tuple[str, bool]:
    """The GPU as NVML sees it (no CUDA context in the driver process), and whether there is one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return "no GPU (NVML sees none)", False
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // MB
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        more = f" (+{count - 1} more)" if count > 1 else ""
        return f"{name}, {memory:,} MiB, driver {driver}{more}", True
    except Exception as error:  # no driver, no binding
        return f"no GPU (NVML: {type(error).__name__}: {error})", False


def versions() -> dict[str, str]:
    import importlib.metadata

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "grpcio", "protobuf", "pydantic"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown (no git checkout)"


def write_report(out: Path, report: dict[str, Any]) -> None:
    temp = out / ".gpu_proof.json.tmp"
    temp.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    temp.replace(out / "gpu_proof.json")


def summary_line(part: dict[str, Any]) -> str:
    if "skipped" in part:
        return f"{part['name']}: SKIPPED ({part['skipped']})"
    verdict = "ok" if part["ok"] else "FAILED"
    detail = ""
    if "error" in part:
        detail = f": {part['error'][:300]}"
    elif "checks" in part and not part["ok"]:
        detail = ": failed checks " + ", ".join(k for k, v in part["checks"].items() if not v)
    return f"{part['name']}: {verdict} in {part['seconds']:.1f} s{detail}"


def drive(args: argparse.Namespace) -> int:
    # A SIGTERM (a test's or a tool's time limit) unwinds, so the running part is ended too.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "gpu_proof.log"
    log_path.write_text("", encoding="utf-8")
    profile = REHEARSAL if args.rehearse else GPU
    budget = args.budget if args.budget is not None else profile.budget_s
    gpu, has_gpu = gpu_description()
    if args.rehearse:
        device = f"CPU rehearsal: {os.cpu_count()}-core {platform.machine()} CPU (no GPU used; {gpu})"
    else:
        device = gpu
    report: dict[str, Any] = {
        "device": device,
        "rehearsal": args.rehearse,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "versions": versions(),
        "budget_seconds": budget or None,
        "parts": [],
    }
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu-proof-"))

    def say(message: str) -> None:
        line = f"[gpu_proof {datetime.now(UTC):%H:%M:%S}] {message}"
        print(line, flush=True)
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    say(f"{'rehearsal on the CPU' if args.rehearse else 'GPU run'}: {device}; writing {out}")
    try:
        for name in args.parts or PARTS:
            remaining = budget - (time.monotonic() - started) if budget else math.inf
            part: dict[str, Any] = {"name": name}
            if not args.rehearse and not has_gpu:
                part.update(ok=False, seconds=0.0, skipped=f"no CUDA GPU here ({gpu}); use --rehearse")
            elif remaining < 20:
                part.update(ok=False, seconds=0.0, skipped=f"the run's time budget of {budget} s was spent")
            else:
                timeout = min(profile.part_timeout_s[name], remaining)
                part.update(run_part_process(name, args, work, log_path, timeout))
            report["parts"].append(part)
            report["seconds"] = round(time.monotonic() - started, 1)
            write_report(out, report)
            say(summary_line(part))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for part in report["parts"] if part["ok"])
    total = len(report["parts"])
    say(f"done in {report['seconds']:.0f} s: {passed}/{total} parts ok; {out / 'gpu_proof.json'}")
    return 0


def end_daemons(work: Path) -> None:
    """Ends the daemons a timed-out part started, with their workers (each in a session of its own)."""
    import psutil

    path = work / DAEMON_PIDS
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").split():
        with contextlib.suppress(psutil.Error, ValueError):
            parent = psutil.Process(int(line))
            for process in [*parent.children(recursive=True), parent]:
                with contextlib.suppress(psutil.Error):
                    process.kill()
    path.unlink()


def end_part(process: subprocess.Popen[bytes], work: Path) -> None:
    """Ends a part's process group (benchmark variants included) and the daemons it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    end_daemons(work)


def run_part_process(
    name: str, args: argparse.Namespace, work: Path, log_path: Path, timeout: float
) -> dict[str, Any]:
    """Runs a part in a fresh process with a time limit; returns ``ok``, ``seconds`` and its figures."""
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--work", str(work)]
    if args.rehearse:
        command.append("--rehearse")
    for strategy in args.strategy or ():
        command += ["--strategy", strategy]
    started = time.monotonic()
    with log_path.open("ab") as handle:
        handle.write(f"\n==== part {name} (limit {timeout:.0f} s) ====\n".encode())
        handle.flush()
        # A process group of its own (to end it whole) in this session (so whoever ends the run ends it).
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, process_group=0)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        except BaseException:  # stopped (SIGTERM, Ctrl-C): end the part, its daemon and workers too
            end_part(process, work)
            raise
        if code is None:
            end_part(process, work)
    seconds = round(time.monotonic() - started, 1)
    result_path = work / f"{name}{RESULT_SUFFIX}"
    if code is None:
        return {
            "ok": False,
            "seconds": seconds,
            "error": f"did not finish within its limit of {timeout:.0f} s",
        }
    if not result_path.is_file():
        return {
            "ok": False,
            "seconds": seconds,
            "error": f"its process exited with {code} (see gpu_proof.log)",
        }
    figures = json.loads(result_path.read_text(encoding="utf-8"))
    return {"ok": bool(figures.pop("ok", False)), "seconds": seconds, **figures}


def markdown(report: dict[str, Any]) -> str:
    """The figures of a ``gpu_proof.json`` as Markdown tables, for bench/RESULTS.md."""
    kind = "CPU rehearsal (tiny shapes; not GPU figures)" if report["rehearsal"] else "GPU run"
    lines = [
        f"{kind}. Device: {report['device']}; {report['started_at']}, commit {report['commit']}; "
        f"{report.get('seconds', 0):.0f} s in all.",
        "",
        "| part | ok | seconds | note |",
        "|---|---|---:|---|",
    ]
    parts = {part["name"]: part for part in report["parts"]}
    for part in report["parts"]:
        note = part.get("skipped") or part.get("error") or ""
        if "checks" in part and not part["ok"]:
            note = "failed: " + ", ".join(k for k, v in part["checks"].items() if not v)
        lines.append(f"| {part['name']} | {'yes' if part['ok'] else 'no'} | {part['seconds']:.1f} | {note} |")
    job = parts.get("daemon_job", {}).get("job")
    if job:
        plan, rep = job["plan"], job["report"]
        lines += [
            "",
            f"Daemon job: {job['state']} in {job['seconds']:.0f} s, {rep['steps']} steps, "
            f"{plan['precision']}, "
            f"micro-batch {plan['micro_batch_size']} × {plan['gradient_accumulation_steps']}, packing "
            f"{plan['packing']}, checkpoints {', '.join(job['checkpoints'])}, eval loss {rep['eval_loss']}, "
            f"{rep['tokens_per_second']:.0f} trained tokens/s, peak {rep['peak_memory_mb']} MB "
            f"(planner {plan['memory_estimate_mb']} MB), {job['gpu_samples']} gpu_sample events.",
        ]
    throughput = parts.get("throughput", {})
    if throughput.get("variants"):
        lines += [
            "",
            f"Throughput, Qwen3 shape `{throughput['model_shape']}`, {throughput['samples']} samples, "
            f"{throughput['tokens']:,} tokens, effective batch {throughput['effective_batch']}; MFU against "
            f"{throughput['peak_flops'] / 1e9:,.1f} GFLOP/s ({throughput['peak_flops_source']}); FLOPs "
            f"{throughput['flops_formula']}.",
            "",
            "| variant | steps | trained tokens/s | median step s | peak memory MB | MFU "
            "| MFU (median step) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key, v in throughput["variants"].items():
            if not v.get("ok"):
                lines.append(f"| {key}. {v['variant']} | failed: {v.get('error', '')[:200]} | | | | | |")
                continue
            lines.append(
                f"| {key}. {v['variant']} | {v['steps']} | {v['trained_tokens_per_second']:,.0f} "
                f"| {v['median_step_seconds']:.3f} | {v['peak_memory_mb']:,.0f} | {v['mfu']:.1%} "
                f"| {v['mfu_median_step']:.1%} |"
            )
    oom = parts.get("oom_recovery", {})
    if oom.get("recoveries"):
        r = oom["recoveries"][0]
        cap = f", memory capped at {oom['memory_cap_mb']} MB" if "memory_cap_mb" in oom else ""
        lines += [
            "",
            f"OOM recovery: planned micro-batch {oom['planned_micro_batch']} "
            f"(planner {oom['planner_estimate_mb']} MB, measured "
            f"peak {oom.get('measured_peak_mb')} MB{cap}); "
            f"out of memory at step {r['step']} "
            f"({oom.get('oom_source') or str(oom.get('cuda_ooms')) + ' CUDA OOM(s)'}), micro-batch "
            f"{r['old_micro_batch']} → {r['new_micro_batch']}, accumulation {r['old_accumulation']} → "
            f"{r['new_accumulation']}, resumed from step {r['resumed_from_step']}, finished "
            f"{oom['steps']}/{oom['total_steps']} steps.",
        ]
    strategies = parts.get("strategies", {}).get("strategies")
    if strategies:
        lines += [
            "",
            "| strategy | world size | ok | tokens/s | peak MB | note |",
            "|---|---:|---|---:|---:|---|",
        ]
        for st in strategies:
            rate = f"{st['tokens_per_second']:,.0f}" if st.get("tokens_per_second") else ""
            lines.append(
                f"| {st['strategy']} | {st.get('world_size', '')} | {'yes' if st['ok'] else 'no'} | {rate} "
                f"| {st.get('peak_memory_mb', '')} | {st.get('skipped') or st.get('error') or ''} |"
            )
    long_rows = parts.get("long_sequences", {})
    if long_rows.get("runs"):
        lines += [
            "",
            f"Long row: {long_rows['row_tokens']:,} tokens ({long_rows['samples_in_row']} packed samples), "
            f"Qwen3 shape `{long_rows['model_shape']}`; measured: {long_rows['memory_measured']}.",
            "",
            "| gradient checkpointing | median step s | tokens/s | measured peak MB | planner estimate MB "
            "| measured / estimate | out of memory |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for run in long_rows["runs"]:
            lines.append(
                f"| {'on' if run['gradient_checkpointing'] else 'off'} | {run['median_step_seconds']} "
                f"| {run['tokens_per_second']} | {run['measured_peak_mb']:,.0f} "
                f"| {run['planner_estimate_mb']:,} "
                f"| {run['measured_over_estimate']:.2f} | {'yes' if run['out_of_memory'] else 'no'} |"
            )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rehearse", action="store_true", help="run every part on the CPU with tiny shapes")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or REPO / "bench" / "out" / "gpu_proof"),
        help="where gpu_proof.json and gpu_proof.log go (default: $OUT, else bench/out/gpu_proof)",
    )
    parser.add_argument(
        "--strategy",
        action="append",
        help="a parallel strategy for the strategies part (repeatable; default: every one the schema names)",
    )
    parser.add_argument("--parts", type=lambda s: s.split(","), help="comma-separated subset of the parts")
    parser.add_argument("--budget", type=int, default=None, help="seconds for the whole run (0: no limit)")
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="JSON",
        help="print a gpu_proof.json's figures as Markdown, run nothing",
    )
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts or () if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return 0
    if args.part:
        ctx = Context(rehearse=args.rehearse, work=args.work, strategies=tuple(args.strategy or ()))
        return run_part_here(args.part, ctx)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
