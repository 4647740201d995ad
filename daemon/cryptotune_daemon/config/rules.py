"""Rules over a validated config: cross-field errors, then warnings about risky settings."""

from __future__ import annotations

from cryptotune_daemon.config.issues import _Collector
from cryptotune_daemon.config.lora_targets import known_kv_heads, qwen3_target_problems
from cryptotune_daemon.config.messages import _number_text
from cryptotune_daemon.config.pipeline import micro_batch_split_note, pipeline_key_issues
from cryptotune_daemon.config.report_targets import missing_reporters, missing_reporters_message
from cryptotune_daemon.config.schema import CryptotuneConfig, generation_record_count
from cryptotune_daemon.config.strategies import (
    strategy_key_issues,
    tensor_parallel_degree_problem,
)

_SPLIT_TOLERANCE = 1e-6


def _cross_checks(config: CryptotuneConfig, out: _Collector, gpu_count: int | None) -> None:
    """Rules that span keys; each runs only when every key it reads is valid."""
    training, data, parallel = config.training, config.data, config.parallel
    if out.usable("lora.target_modules", "model.model_name"):
        for position, message in qwen3_target_problems(config.model.model_name, config.lora.target_modules):
            out.error(("lora", "target_modules", position), message)
    if out.usable("data.train_split_ratio", "data.eval_split_ratio"):
        total = data.train_split_ratio + data.eval_split_ratio
        if abs(total - 1.0) > _SPLIT_TOLERANCE:
            out.error(
                out.written(("data", "eval_split_ratio"), ("data", "train_split_ratio")),
                f"train_split_ratio ({_number_text(data.train_split_ratio)}) + eval_split_ratio "
                f"({_number_text(data.eval_split_ratio)}) = {total:.6g}, but the two must add up to 1; "
                f"for example set eval_split_ratio: {1.0 - data.train_split_ratio:.6g}",
                ("data", "train_split_ratio"),
            )
    if out.usable("training.fp16", "training.bf16") and training.fp16 and training.bf16:
        out.error(
            ("training", "fp16"),
            "fp16 and bf16 are both true; pick one: keep bf16: true (Qwen3 is trained in bf16) "
            "and set fp16: false",
            ("training", "bf16"),
        )
    for kind in ("eval", "save"):
        strategy = training.eval_strategy if kind == "eval" else training.save_strategy
        steps = training.eval_steps if kind == "eval" else training.save_steps
        if (
            out.usable(f"training.{kind}_strategy", f"training.{kind}_steps")
            and strategy == "steps"
            and steps < 1
        ):
            out.error(
                ("training", f"{kind}_steps"),
                f"must be at least 1 when {kind}_strategy is steps, got {steps}; for example set "
                f"{kind}_steps: 500, or set {kind}_strategy to epoch",
                ("training", f"{kind}_strategy"),
            )
    if (
        out.usable("training.eval_strategy", "data.eval_split_ratio")
        and training.eval_strategy != "no"
        and data.eval_split_ratio <= 0
    ):
        out.error(
            ("data", "eval_split_ratio"),
            f"is 0, so there is no eval data, but training.eval_strategy is '{training.eval_strategy}'; "
            'set eval_split_ratio: 0.1 and train_split_ratio: 0.9, or set training.eval_strategy: "no"',
        )
    if not out.usable("parallel.world_size", "parallel.enable_distributed"):
        return
    if out.usable("parallel.strategy", "parallel.tensor_parallel_size", "parallel.pipeline_micro_batches"):
        fields = type(parallel).model_fields
        changed = {key for key, info in fields.items() if getattr(parallel, key) != info.default}
        for key, message, is_error in strategy_key_issues(
            parallel.strategy,
            parallel.world_size,
            parallel.tensor_parallel_size,
            parallel.pipeline_micro_batches,
            changed,
        ):
            (out.error if is_error else out.warn)(("parallel", key), message, ("parallel", "strategy"))
        _check_kv_heads(config, out)
    _pipeline_checks(config, out)
    if parallel.world_size > 1 and not parallel.enable_distributed:
        out.error(
            ("parallel", "world_size"),
            f"is {parallel.world_size} but enable_distributed is false; set parallel.enable_distributed: "
            "true to train on several GPUs, or set world_size: 1",
        )
    if not out.usable("parallel.nodes"):
        return
    if parallel.nodes > 1 and parallel.world_size % parallel.nodes:
        out.error(
            ("parallel", "nodes"),
            f"is {parallel.nodes} but world_size is {parallel.world_size}: each machine runs the same "
            f"number of ranks; set world_size to a multiple of {parallel.nodes} (e.g. {2 * parallel.nodes}) "
            "or nodes: 1",
            ("parallel", "world_size"),
        )
    if (
        parallel.nodes == 1
        and parallel.enable_distributed
        and gpu_count is not None
        and 0 < gpu_count < parallel.world_size
    ):
        out.error(
            ("parallel", "world_size"),
            f"is {parallel.world_size} but this machine has {gpu_count} GPU(s); "
            f"set world_size to at most {gpu_count}, or spread the ranks over several machines with "
            f"parallel.nodes (e.g. nodes: {-(-parallel.world_size // gpu_count)}) on a daemon attached to "
            "a Ray cluster",
        )


def _check_kv_heads(config: CryptotuneConfig, out: _Collector) -> None:
    """A tensor-parallel degree must divide the KV heads of a model known without loading it (the
    Qwen3 family, the builtin model, a local directory's config.json); others are checked at job start."""
    parallel = config.parallel
    if not out.usable("model.model_name"):
        return
    strategy, world, degree = parallel.strategy, parallel.world_size, parallel.tensor_parallel_size
    if strategy == "model_parallel":
        loc = out.written(("parallel", "tensor_parallel_size"), ("parallel", "world_size"))
        degree = world
    elif strategy == "hybrid_parallel" and 1 < degree < world and world % degree == 0:
        loc = ("parallel", "tensor_parallel_size")
    else:
        return
    kv_heads = known_kv_heads(config.model.model_name)
    if kv_heads is None:
        return
    name = config.model.model_name.rstrip("/").rsplit("/", 1)[-1]
    problem = tensor_parallel_degree_problem(degree, kv_heads, name)
    if problem is not None:
        what = "parallel.world_size" if strategy == "model_parallel" else "parallel.tensor_parallel_size"
        out.error(loc, f"{problem} as {what}", ("parallel", "strategy"))


def _pipeline_checks(config: CryptotuneConfig, out: _Collector) -> None:
    """``pipeline_parallel``'s schedule and micro-batch keys (the layer count is checked at init)."""
    parallel = config.parallel
    keys = ("parallel.strategy", "parallel.pipeline_schedule", "parallel.pipeline_micro_batches")
    if not out.usable(*keys):
        return
    for key, message, is_error in pipeline_key_issues(
        parallel.strategy, parallel.world_size, parallel.pipeline_schedule, parallel.pipeline_micro_batches
    ):
        (out.error if is_error else out.warn)(("parallel", key), message, ("parallel", "strategy"))
    per_device = config.training.per_device_train_batch_size
    if (
        parallel.strategy == "pipeline_parallel"
        and parallel.world_size > 1
        and out.usable("training.per_device_train_batch_size")
        and isinstance(per_device, int)
        and (note := micro_batch_split_note(per_device, parallel.pipeline_micro_batches))
    ):
        out.warn(("parallel", "pipeline_micro_batches"), note, ("training", "per_device_train_batch_size"))


def _warnings(config: CryptotuneConfig, out: _Collector) -> None:
    """Settings that are valid but likely to hurt a run."""
    training, lora = config.training, config.lora
    if out.usable("training.report_to") and (missing := missing_reporters(training.report_to)):
        out.warn(
            ("training", "report_to"), f"{missing_reporters_message(missing)}; the job would fail at init"
        )
    if out.usable("model.trust_remote_code") and config.model.trust_remote_code:
        out.warn(
            ("model", "trust_remote_code"),
            "is true, but remote code stays off unless the daemon was started with --allow-remote-code; "
            "Qwen3 needs none, so set it to false",
        )
    if out.usable("training.learning_rate") and training.learning_rate > 1e-3:
        out.warn(
            ("training", "learning_rate"),
            f"{training.learning_rate:g} is high for LoRA and may make training diverge; 1e-4 to 5e-4 "
            "is typical (the default is 2.0e-4)",
        )
    if out.usable("training.max_seq_length") and training.max_seq_length > 32768:
        out.warn(
            ("training", "max_seq_length"),
            f"{training.max_seq_length} tokens need a lot of GPU memory (activations grow with the "
            "sequence length); lower it unless your samples are that long",
        )
    if out.usable("training.eval_strategy") and training.eval_strategy == "no":
        out.warn(
            ("training", "eval_strategy"),
            "is 'no': the report will have no eval loss; set eval_strategy: steps to watch for overfitting",
        )
    if out.usable("training.fp16", "training.bf16") and training.fp16 and not training.bf16:
        out.warn(
            ("training", "fp16"),
            "Qwen3 is trained in bf16; fp16 may overflow. Prefer bf16: true on GPUs that support it "
            "(Ampere or newer)",
        )
    ratio = lora.alpha / lora.rank
    if out.usable("lora.alpha", "lora.rank") and not 0.5 <= ratio <= 4.0:
        strength = "weakly" if ratio < 0.5 else "strongly"
        out.warn(
            out.written(("lora", "alpha"), ("lora", "rank")),
            f"alpha / rank = {lora.alpha:g} / {lora.rank} = {ratio:.3g} is outside 0.5 to 4, so the "
            f"adapter's updates are scaled unusually {strength}; alpha = 2 × rank "
            f"(here {2 * lora.rank}) is a common choice",
            ("lora", "rank"),
        )
    if out.usable("lora.optimization_strategy") and lora.optimization_strategy in ("balanced", "quality"):
        out.warn(
            ("lora", "optimization_strategy"),
            f"'{lora.optimization_strategy}' plans exactly like 'auto' (the largest micro-batch that fits, "
            "gradient checkpointing only when needed); only 'memory' changes the plan. Set it to auto, or "
            "to memory to trade speed for memory",
        )
    generation_keys = (
        "training.eval_sample_size",
        "training.max_new_tokens",
        "training.max_generated_tokens",
    )
    if out.usable(*generation_keys):
        wanted, each = training.eval_sample_size, training.max_new_tokens
        checked = generation_record_count(wanted, each, training.max_generated_tokens)
        if checked < wanted:
            out.warn(
                out.written(("training", "max_generated_tokens"), ("training", "eval_sample_size")),
                f"{training.max_generated_tokens} tokens cover only {checked} of the {wanted} records of "
                f"eval_sample_size at max_new_tokens {each} each; raise max_generated_tokens to "
                f"{wanted * each} to check them all",
                ("training", "eval_sample_size"),
            )
    if out.usable("data.shuffle_data") and not config.data.shuffle_data:
        out.warn(
            ("data", "shuffle_data"),
            "is false: the split follows the file order, so train and eval may differ systematically "
            "(by topic or difficulty); set shuffle_data: true unless the order is deliberate",
        )
