"""Training throughput: plain transformers Trainer vs TRL SFTTrainer vs cryptotune's LoraTrainer.

Every variant trains the same Qwen3-shaped model (random weights drawn from one seed, the real Qwen3
tokenizer), the same LoRA adapter, on the same tokenised samples (the bundled Chinese cryptography
set, rendered with cryptotune's Qwen3-Thinking template), with the same effective batch, optimiser
and learning-rate schedule, for one epoch:

  a. transformers ``Trainer`` + peft: batches padded to their longest sample, full logits;
  b. TRL ``SFTTrainer``: ``padding_free=True`` (one flattened row per batch), ``completion_only_loss``;
  c. cryptotune ``LoraTrainer``: packed rows (first-fit decreasing), label-only chunked logits;
  d. cryptotune ``LoraTrainer`` with ``packing=False``: what packing alone adds to (c).

On CPUs every variant runs with the glibc allocator settings cryptotune's trainer uses
(:func:`cryptotune_daemon.training.allocator.retain_freed_memory`; ``--no-allocator-tuning`` leaves
(a) and (b) without them). Each variant runs in a fresh subprocess so its peak memory is its own: on
CPU the peak RSS above the RSS at the start of training (sampled every 5 ms), on CUDA
``max_memory_allocated`` above the memory allocated at the start. Throughput counts trained (label)
tokens, the same for all variants: over the wall time of training, and over the median optimiser
step × steps, which a shared machine's load disturbs far less (one slow step does not move a median).

Usage: ``python bench/train_throughput.py [--device cuda --model-shape qwen3-4b] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "client" / "cryptotune" / "examples" / "crypto_qa_zh.jsonl"
VARIANTS = {
    "a": "transformers Trainer, padded, full logits",
    "b": "TRL SFTTrainer, padding_free, completion_only_loss",
    "c": "cryptotune LoraTrainer, packed, label-only chunked logits",
    "d": "cryptotune LoraTrainer, padded, label-only chunked logits",
}
VOCAB = 151936
SHAPES: dict[str, dict[str, int]] = {
    # builtin:tiny-qwen3's layout: what a CPU rehearsal of bench/gpu_proof.py trains.
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    },
    # Qwen3 layout at a size two CPU cores train in about a minute per variant.
    "bench": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
    },
    # Qwen3-0.6B's shapes (random weights): a real-sized model that saves and loads in seconds.
    "qwen3-0.6b": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
    # Qwen3-4B(-Thinking-2507)'s shapes; random weights, nothing is downloaded.
    "qwen3-4b": {
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
}
SEED = 1234
LEARNING_RATE = 2e-4
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAD_ID = 151643


# -- shared set-up ------------------------------------------------------------------------------------


def model_config(shape: str) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=PAD_ID,
        max_position_embeddings=40960,
        use_cache=False,
        **SHAPES[shape],
    )


def build_model(shape: str, device: str) -> Any:
    import torch
    from transformers import Qwen3ForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(SEED)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(model_config(shape), dtype=dtype)
    model.config.use_cache = False
    return model


def load_examples(samples: int, cache_dir: Path) -> tuple[list[Any], Any]:
    """The first ``samples`` records, rendered and tokenised exactly as cryptotune trains them.

    Asked for more samples than the file holds, the records repeat in file order (the bundled set has
    72; about 30 optimiser steps need more).
    """
    from cryptotune_daemon.data.tokenizer import load_tokenizer
    from cryptotune_daemon.training.dataset import read_records, tokenize_cached

    tokenizer = load_tokenizer("builtin:tiny-qwen3", cache_dir)
    records = read_records(DATA, display_name=DATA.name)
    records = (records * math.ceil(samples / max(len(records), 1)))[:samples]
    examples, _ = tokenize_cached(records, tokenizer, cache_dir / f"bench-{samples}.pt")
    return examples, tokenizer


def lora_config() -> Any:
    import peft

    return peft.LoraConfig(target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM", **LORA)


class PeakMemory:
    """Peak memory above the level at :meth:`start`: RSS sampled by a thread (CPU) or CUDA's counters."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        import psutil

        process = psutil.Process()
        self.base = self.peak = process.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Bytes of peak memory above the starting level."""
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - self.base)
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return self.peak - self.base


# -- the variants -------------------------------------------------------------------------------------


def hf_arguments(output_dir: Path, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": args.micro_batch,
        "gradient_accumulation_steps": args.effective_batch // args.micro_batch,
        "num_train_epochs": 1,
        "learning_rate": LEARNING_RATE,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": SEED,
        "use_cpu": args.device == "cpu",
        "bf16": args.device == "cuda",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        **extra,
    }


class StepClock:
    """Seconds of each optimiser step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = 0.0

    def start(self) -> None:
        self._last = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now


def hf_step_callback(clock: StepClock) -> Any:
    from transformers import TrainerCallback

    class Callback(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            clock.start()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.tick()

    return Callback()


def run_transformers(examples: list[Any], args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    import peft
    import torch
    from transformers import Trainer, TrainingArguments

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), PAD_ID, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    dataset = [{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in examples]
    model = peft.get_peft_model(build_model(args.model_shape, args.device), lora_config())
    clock = StepClock()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**hf_arguments(output_dir, args, remove_unused_columns=False)),
        train_dataset=dataset,  # type: ignore[arg-type]
        data_collator=collate,
        callbacks=[hf_step_callback(clock)],
    )
    return timed(args.device, trainer.train, lambda: hf_losses(trainer), clock)


def run_trl(
    examples: list[Any], tokenizer: Any, args: argparse.Namespace, output_dir: Path
) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    # Pre-tokenised prompt-completion data: TRL then trains on exactly these tokens, the loss only
    # where completion_mask is 1 (the assistant turn, as cryptotune's labels).
    rows = [
        {
            "input_ids": list(e.input_ids),
            "completion_mask": [0] * e.prompt_tokens + [1] * (e.length - e.prompt_tokens),
        }
        for e in examples
    ]
    config = SFTConfig(
        **hf_arguments(output_dir, args),
        padding_free=True,
        completion_only_loss=True,
        packing=False,
        max_length=None,  # padding-free without packing does not truncate; no sample is cut anyway
    )
    clock = StepClock()
    trainer = SFTTrainer(
        model=build_model(args.model_shape, args.device),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[hf_step_callback(clock)],
    )
    return timed(args.device, trainer.train, lambda: hf_losses(trainer), clock)


def run_cryptotune(
    examples: list[Any], args: argparse.Namespace, output_dir: Path, *, packing: bool
) -> dict[str, Any]:
    import torch

    from cryptotune_daemon.training.checkpoints import Hashes
    from cryptotune_daemon.training.distributed import DistContext
    from cryptotune_daemon.training.trainer import LoraTrainer, TrainerSettings

    steps = math.ceil(len(examples) / args.effective_batch)
    settings = TrainerSettings(
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=1.0,
        total_steps=steps,
        micro_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.effective_batch // args.micro_batch,
        precision="bf16" if args.device == "cuda" else "fp32",
        gradient_checkpointing=False,
        seed=SEED,
        lora_rank=int(LORA["r"]),
        lora_alpha=float(LORA["lora_alpha"]),
        lora_dropout=float(LORA["lora_dropout"]),
        lora_target_modules=tuple(LORA_TARGETS),
        logging_steps=1,
        save_strategy="no",  # the final checkpoint is still written (included in the time)
        eval_strategy="no",
        packing=packing,
        max_seq_length=args.max_seq_length,
    )
    trainer = LoraTrainer(
        base_model=build_model(args.model_shape, args.device),
        train_examples=examples,
        eval_examples=[],
        settings=settings,
        hashes=Hashes(data="0" * 64, config="0" * 64, tokenizer="0" * 64),
        output_dir=output_dir,
        dist=DistContext(device=torch.device(args.device)),
        pad_token_id=PAD_ID,
        emit=lambda event, _data: clock.tick() if event == "progress" else None,
    )
    trainer.setup()
    clock = StepClock()

    def train() -> None:
        clock.start()
        trainer.train()

    return timed(args.device, train, lambda: [float(loss) for _, loss in trainer.state.loss_history], clock)


def hf_losses(trainer: Any) -> list[float]:
    return [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def timed(device: str, train: Any, losses: Any, clock: StepClock) -> dict[str, Any]:
    import torch

    memory = PeakMemory(device)
    memory.start()
    started = time.perf_counter()
    train()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    history = losses()
    return {
        "seconds": seconds,
        "step_seconds": clock.seconds,
        "peak_memory_bytes": memory.stop(),
        "steps": len(history),
        "final_loss": history[-1] if history else None,
        "mean_loss": sum(history) / len(history) if history else None,
    }


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """Runs one variant in this process (the parent starts one process per variant)."""
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads or (os.cpu_count() or 1))
        if not args.no_allocator_tuning:
            from cryptotune_daemon.training.allocator import retain_freed_memory

            # cryptotune's trainer tunes glibc's allocator on CPUs; every variant gets the same, so
            # the comparison is between training paths, not between heap states.
            retain_freed_memory()
    cache = Path(args.cache_dir)
    examples, tokenizer = load_examples(args.samples, cache)
    with tempfile.TemporaryDirectory(prefix="ct-bench-") as out:
        if args.variant == "a":
            result = run_transformers(examples, args, Path(out))
        elif args.variant == "b":
            result = run_trl(examples, tokenizer, args, Path(out))
        else:
            result = run_cryptotune(examples, args, Path(out), packing=args.variant == "c")
    result["trained_tokens"] = sum(e.label_tokens for e in examples)
    result["tokens_per_second"] = result["trained_tokens"] / result["seconds"]
    steps = result["step_seconds"]
    result["median_step_seconds"] = statistics.median(steps)
    result["tokens_per_second_median_step"] = result["trained_tokens"] / (
        statistics.median(steps) * len(steps)
    )
    return result


# -- the report -----------------------------------------------------------------------------------------


def lm_head_share(shape: dict[str, int], mean_tokens: float) -> float:
    """The LM head's share of a forward pass's FLOPs per token (the backward keeps the proportion)."""
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    q_dim = shape["num_attention_heads"] * shape["head_dim"]
    kv_dim = shape["num_key_value_heads"] * shape["head_dim"]
    per_layer = hidden * (2 * q_dim + 2 * kv_dim) + 3 * hidden * shape["intermediate_size"]
    # QKᵀ and AV: each 2·d FLOPs per attended position; a causal token attends to half the sample on average.
    attention = 2 * 2 * (mean_tokens / 2) * q_dim * layers
    head = 2 * hidden * VOCAB
    return head / (head + 2 * per_layer * layers + attention)


def describe_machine(device: str, threads: int) -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    import platform

    used = threads or os.cpu_count()
    return (
        f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU; "
        f"{used} torch thread(s) per variant"
    )


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, "--variant", variant, *forwarded(args)]
        print(f"[train_throughput] {variant}: {VARIANTS[variant]} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "TOKENIZERS_PARALLELISM": "false",
        }
        completed = subprocess.run(
            command, capture_output=True, text=True, env=env, check=False, timeout=3600
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode != 0 or not lines:
            raise RuntimeError(f"variant {variant} failed:\n{completed.stderr[-4000:]}")
        results[variant] = json.loads(lines[-1][len("RESULT ") :])
        print(
            f"[train_throughput] {variant}: {results[variant]['tokens_per_second']:.0f} tokens/s "
            f"({time.monotonic() - started:.0f} s with start-up)",
            file=sys.stderr,
            flush=True,
        )
    examples, _ = load_examples(args.samples, cache)
    mean_tokens = sum(e.length for e in examples) / len(examples)
    summary = {
        "machine": describe_machine(args.device, args.threads),
        "device": args.device,
        "model_shape": args.model_shape,
        "samples": len(examples),
        "tokens": sum(e.length for e in examples),
        "label_tokens": sum(e.label_tokens for e in examples),
        "effective_batch": args.effective_batch,
        "micro_batch": args.micro_batch,
        "max_seq_length": args.max_seq_length,
        "variants": results,
        "lm_head_share": {
            args.model_shape: lm_head_share(SHAPES[args.model_shape], mean_tokens),
            "qwen3-4b": lm_head_share(SHAPES["qwen3-4b"], mean_tokens),
        },
    }
    return summary


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--device",
        args.device,
        "--model-shape",
        args.model_shape,
        "--samples",
        str(args.samples),
        "--effective-batch",
        str(args.effective_batch),
        "--micro-batch",
        str(args.micro_batch),
        "--max-seq-length",
        str(args.max_seq_length),
        "--cache-dir",
        args.cache_dir,
        "--threads",
        str(args.threads),
        *(["--no-allocator-tuning"] if args.no_allocator_tuning else []),
    ]


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}×" if value and base else "n/a"


def markdown(summary: dict[str, Any]) -> str:
    """The results as Markdown: one row per variant, then every variant against (a) and (b)."""
    variants = summary["variants"]
    lines = [
        f"Machine: {summary['machine']}. Model: Qwen3 shape `{summary['model_shape']}` "
        f"(vocab {VOCAB:,}, random weights), LoRA r={LORA['r']} on all linear projections. "
        f"Data: {summary['samples']} samples, {summary['tokens']:,} tokens, "
        f"{summary['label_tokens']:,} trained (label) tokens; effective batch {summary['effective_batch']} "
        f"(micro-batch {summary['micro_batch']}), one epoch.",
        "",
        "| variant | trained tokens/s (wall) | tokens/s (median step) | wall s | median step s "
        "| peak memory MB | final loss | mean loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in variants.items():
        lines.append(
            f"| {key}. {VARIANTS[key]} | {r['tokens_per_second']:,.0f} "
            f"| {r['tokens_per_second_median_step']:,.0f} "
            f"| {r['seconds']:.1f} | {r['median_step_seconds']:.2f} | {r['peak_memory_bytes'] / 2**20:,.0f} "
            f"| {r['final_loss']:.4f} | {r['mean_loss']:.4f} |"
        )
    lines += [
        "",
        "| variant | tokens/s (wall) vs a / vs b | tokens/s (median step) vs a / vs b "
        "| peak memory vs a / vs b |",
        "|---|---:|---:|---:|",
    ]
    a, b = variants.get("a", {}), variants.get("b", {})
    for key, r in variants.items():
        cells = [
            f"{ratio(r[field], a.get(field))} / {ratio(r[field], b.get(field))}"
            for field in ("tokens_per_second", "tokens_per_second_median_step", "peak_memory_bytes")
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    shares = summary["lm_head_share"]
    lines += [
        "",
        "LM head share of forward FLOPs per token: "
        + ", ".join(f"{name} {share:.1%}" for name, share in shares.items())
        + ". On the benchmark model the head dominates, so skipping prompt and padding logits shows up "
        "almost fully in the CPU figures; on Qwen3-4B the head is a small share, and the gain there comes "
        "mostly from packing (no padding tokens through 36 layers) and from the memory it frees for larger "
        "batches.",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model-shape", choices=sorted(SHAPES), default="bench")
    parser.add_argument("--variants", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--effective-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    # One thread by default: on a shared machine a second thread stalls at every operation while
    # another process holds its core, which made two-thread figures swing threefold between runs.
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: one per core)")
    parser.add_argument(
        "--no-allocator-tuning",
        action="store_true",
        help="leave glibc's allocator as it is in (a) and (b) (cryptotune's trainer still tunes it in c, d)",
    )
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "cryptotune-bench-cache"))
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.effective_batch % args.micro_batch:
        parser.error("--effective-batch must be a multiple of --micro-batch")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse(argv)
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args)), flush=True)
        return None
    summary = run_all(args)
    print(markdown(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
