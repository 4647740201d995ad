"""Pydantic models of the cryptotune config: one model per YAML section, defaults from the user manual."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from cryptotune_daemon.constants import (
    BUILTIN_TINY_QWEN3,
    DEFAULT_MAX_SEQ_LENGTH,
    DEFAULT_MODEL_ID,
    MAX_SEQ_LENGTH,
    MIN_SEQ_LENGTH,
)

SchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]
IntervalStrategy = Literal["no", "steps", "epoch"]
OptimizationStrategy = Literal["auto", "memory", "balanced", "quality"]
DataFormat = Literal["auto", "alpaca", "sharegpt", "openai"]
# Which of these train today is decided by config/strategies.py (the rest are refused at submission).
ParallelStrategy = Literal[
    "data_parallel", "sharded_data_parallel", "model_parallel", "pipeline_parallel", "hybrid_parallel", "auto"
]
PipelineSchedule = Literal["gpipe", "1f1b"]
ModelHub = Literal["huggingface", "modelscope"]
# Where training metrics go besides the job's events; tensorboard needs nothing extra, the others
# their package in the daemon's environment (checked by the job's init stage).
ReportTarget = Literal["tensorboard", "wandb", "mlflow"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Precision = Literal["bf16", "fp16", "fp32"]

# Plain decimal or scientific notation. PyYAML (YAML 1.1) only reads floats that contain a dot,
# so the manual's `learning_rate: 2e-4` arrives as the string "2e-4" and must be read here.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER_RE = re.compile(r"[+-]?\d+")
# A module name, or peft's "all-linear" (every linear layer but the output head).
_MODULE_NAME_PATTERN = r"^(?:[A-Za-z_][A-Za-z0-9_]*|all-linear)$"
# Longer digit strings are typos or attacks; int() would also refuse them past 4300 digits.
_MAX_NUMBER_CHARS = 64
_MAX_PATH_BYTES = 4096  # Linux PATH_MAX


def describe_value(value: Any) -> str:
    """Renders a YAML value for an error message: ``'abc'``, ``true``, ``null``, ``3``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {str(value)[:40]!r}"


def _fail(kind: str, message: str) -> PydanticCustomError:
    # The message is complete already; no context is passed, so braces in user input stay literal.
    return PydanticCustomError(f"ct_{kind}", message)


def _finite(number: float, value: Any) -> float:
    if not math.isfinite(number):
        raise _fail("number", f"expected a finite number, got {describe_value(value)}")
    return number


def _refuse_huge(text: str, value: Any, expected: str) -> None:
    if len(text) > _MAX_NUMBER_CHARS and _NUMBER_RE.fullmatch(text):
        raise _fail("number", f"expected {expected} of sensible size, got {describe_value(value)}")


def _to_number(value: Any) -> Any:
    """Accepts ints, floats and numeric strings ("2e-4"); refuses booleans and non-finite values."""
    if isinstance(value, bool):
        raise _fail("number", f"expected a number, got {describe_value(value)}")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise _fail(
                "number", f"expected a number of sensible size, got {describe_value(value)}"
            ) from None
    if isinstance(value, float):
        return _finite(value, value)
    if isinstance(value, str):
        text = value.strip()
        _refuse_huge(text, value, "a number")
        if _NUMBER_RE.fullmatch(text):
            return _finite(float(text), value)
    raise _fail("number", f"expected a number, got {describe_value(value)}")


def _to_integer(value: Any) -> Any:
    """Accepts ints, integral floats (500.0) and integral numeric strings ("5e2"); refuses booleans."""
    if isinstance(value, bool):
        raise _fail("integer", f"expected an integer, got {describe_value(value)}")
    if isinstance(value, int):
        return value
    number: float | None = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        _refuse_huge(text, value, "an integer")
        if _INTEGER_RE.fullmatch(text):
            return int(text)
        if _NUMBER_RE.fullmatch(text):
            number = float(text)
    if number is not None and math.isfinite(number) and number.is_integer():
        return int(number)
    raise _fail("integer", f"expected an integer, got {describe_value(value)}")


def _optional_integer(value: Any) -> Any:
    return None if value is None else _to_integer(value)


def _to_bool(value: Any) -> Any:
    """Accepts YAML booleans and the quoted strings "true"/"false"; numbers are not booleans."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _fail("bool", f"expected true or false, got {describe_value(value)}")


def _to_bool_or_auto(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _to_bool(value)
    except PydanticCustomError:
        raise _fail("bool", f"expected true, false or 'auto', got {describe_value(value)}") from None


def _to_positive_int_or_auto(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = _to_integer(value)
    except PydanticCustomError:
        raise _fail(
            "integer", f"expected a positive integer or 'auto', got {describe_value(value)}"
        ) from None
    if number < 1:
        raise _fail("range", f"must be at least 1 (or 'auto' to size it from GPU memory), got {number}")
    return number


def _to_max_steps(value: Any) -> Any:
    number = _to_integer(value)
    if number == 0 or number < -1:
        raise _fail(
            "range",
            f"must be -1 (train for num_train_epochs) or a positive number of optimizer steps, got {number}",
        )
    return number


def _to_string(value: Any) -> Any:
    if isinstance(value, str):
        return value
    # Numbers and dates are strings to the user but not to YAML: quoting fixes them.
    hint = "" if value is None or isinstance(value, bool | list | dict) else "; put the value in quotes"
    raise _fail("string", f"expected a string, got {describe_value(value)}{hint}")


def _to_path_text(value: Any) -> Any:
    """A directory path: a string no file system refuses outright (no NUL, within PATH_MAX)."""
    text = _to_string(value)
    if "\x00" in text:
        raise _fail("path", f"contains a NUL character, which no path can hold: {describe_value(text)}")
    if len(text.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES:
        raise _fail("path", f"is longer than {_MAX_PATH_BYTES} bytes; give a shorter directory path")
    return text


def _to_optional_path_text(value: Any) -> Any:
    return None if value is None else _to_path_text(value)


def _to_choice(value: Any) -> Any:
    # Enum values are matched case-insensitively; anything not a string is left to the Literal check.
    return value.strip().lower() if isinstance(value, str) else value


def _to_interval(value: Any) -> Any:
    # YAML 1.1 reads an unquoted `no` as false; `eval_strategy: no` means the strategy "no".
    if value is False:
        return "no"
    return _to_choice(value)


def _to_log_level(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _to_module_list(value: Any) -> Any:
    if not isinstance(value, list):
        raise _fail(
            "list",
            f'expected a list of module names such as ["q_proj", "v_proj"], got {describe_value(value)}',
        )
    return value


def _to_report_list(value: Any) -> Any:
    if isinstance(value, str):  # `report_to: tensorboard` means a list of one
        value = [value]
    if not isinstance(value, list):
        raise _fail(
            "list",
            f"expected a list such as [tensorboard, wandb] (or [] for none), got {describe_value(value)}",
        )
    return [_to_choice(item) for item in value]


def _to_module_name(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(_MODULE_NAME_PATTERN, value):
        raise _fail(
            "module",
            "expected a module name such as 'q_proj' (ASCII letters, digits and underscores) or "
            "'all-linear', "
            f"got {describe_value(value)}",
        )
    return value


Boolean = Annotated[bool, BeforeValidator(_to_bool)]
PositiveIntOrAuto = Annotated[
    Annotated[int, Field(ge=1)] | Literal["auto"], BeforeValidator(_to_positive_int_or_auto)
]
BoolOrAuto = Annotated[bool | Literal["auto"], BeforeValidator(_to_bool_or_auto)]
ModuleName = Annotated[str, Field(pattern=_MODULE_NAME_PATTERN), BeforeValidator(_to_module_name)]


class _Section(BaseModel):
    # strict: the before-validators above already did every coercion we allow; nothing else slips in.
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


class ModelConfig(_Section):
    """Which base model to fine-tune."""

    model_name: Annotated[str, Field(min_length=1), BeforeValidator(_to_string)] = Field(
        default=DEFAULT_MODEL_ID,
        description=f"Hugging Face hub id, local model directory, or {BUILTIN_TINY_QWEN3} (offline demo).",
        examples=[DEFAULT_MODEL_ID],
    )
    model_revision: Annotated[str, Field(min_length=1), BeforeValidator(_to_string)] = Field(
        default="main",
        description="Branch, tag or commit of the hub repository.",
        examples=["main"],
    )
    hub: Annotated[ModelHub, BeforeValidator(_to_choice)] = Field(
        default="huggingface",
        description="Where hub ids are downloaded from: huggingface (HF_ENDPOINT selects a mirror) or "
        "modelscope (needs the modelscope package where the daemon runs).",
    )
    trust_remote_code: Boolean = Field(
        default=False,
        description="Run Python code shipped with the model; Qwen3 needs none, and the daemon refuses it "
        "unless started with --allow-remote-code.",
    )


def generation_record_count(available: int, max_new_tokens: int, max_generated_tokens: int) -> int:
    """How many of ``available`` eval records the generation checks cover: as many as can each
    generate ``max_new_tokens`` without the total passing ``max_generated_tokens``."""
    return max(0, min(available, max_generated_tokens // max(max_new_tokens, 1)))


class TrainingConfig(_Section):
    """Optimizer, schedule, precision, checkpointing and evaluation."""

    num_train_epochs: Annotated[float, Field(gt=0), BeforeValidator(_to_number)] = Field(
        default=3.0, description="Passes over the training split.", examples=[3]
    )
    max_steps: Annotated[int, Field(ge=-1), BeforeValidator(_to_max_steps)] = Field(
        default=-1, description="Stop after this many optimizer steps; -1 trains for num_train_epochs."
    )
    per_device_train_batch_size: PositiveIntOrAuto = Field(
        default=1,
        description="Samples per GPU per step, or auto to size it from GPU memory.",
        examples=[1, "auto"],
    )
    gradient_accumulation_steps: PositiveIntOrAuto = Field(
        default=4,
        description="Steps whose gradients are summed before each optimizer step, or auto.",
        examples=[4],
    )
    learning_rate: Annotated[float, Field(gt=0, lt=1), BeforeValidator(_to_number)] = Field(
        default=2.0e-4, description="Peak learning rate; 1e-4 to 5e-4 suits LoRA.", examples=[2.0e-4]
    )
    weight_decay: Annotated[float, Field(ge=0), BeforeValidator(_to_number)] = Field(
        default=0.01, description="AdamW weight decay.", examples=[0.01]
    )
    warmup_ratio: Annotated[float, Field(ge=0, lt=1), BeforeValidator(_to_number)] = Field(
        default=0.1, description="Fraction of the steps spent warming the learning rate up.", examples=[0.1]
    )
    lr_scheduler_type: Annotated[SchedulerType, BeforeValidator(_to_choice)] = Field(
        default="cosine", description="Learning-rate schedule after warm-up."
    )
    max_grad_norm: Annotated[float, Field(ge=0), BeforeValidator(_to_number)] = Field(
        default=1.0, description="Gradient clipping norm; 0 turns clipping off.", examples=[1.0]
    )
    fp16: Boolean = Field(default=False, description="Train in float16 (older GPUs without bf16).")
    bf16: Boolean = Field(default=True, description="Train in bfloat16 (Qwen3's native precision).")
    gradient_checkpointing: BoolOrAuto = Field(
        default="auto", description="Recompute activations to save memory; auto decides from GPU memory."
    )
    save_strategy: Annotated[IntervalStrategy, BeforeValidator(_to_interval)] = Field(
        default="steps", description="When to write checkpoints."
    )
    save_steps: Annotated[int, Field(ge=0), BeforeValidator(_to_integer)] = Field(
        default=500,
        description="Optimizer steps between checkpoints when save_strategy is steps.",
        examples=[500],
    )
    eval_strategy: Annotated[IntervalStrategy, BeforeValidator(_to_interval)] = Field(
        default="steps", description="When to compute the eval loss."
    )
    eval_steps: Annotated[int, Field(ge=0), BeforeValidator(_to_integer)] = Field(
        default=500,
        description="Optimizer steps between evaluations when eval_strategy is steps.",
        examples=[500],
    )
    logging_steps: Annotated[int, Field(ge=1), BeforeValidator(_to_integer)] = Field(
        default=10, description="Optimizer steps between progress events.", examples=[10]
    )
    max_seq_length: Annotated[
        int, Field(ge=MIN_SEQ_LENGTH, le=MAX_SEQ_LENGTH), BeforeValidator(_to_integer)
    ] = Field(
        default=DEFAULT_MAX_SEQ_LENGTH,
        description="Longest tokenized sample; longer samples are reported and refused, never cut.",
        examples=[2048],
    )
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), BeforeValidator(_to_integer)] = Field(
        default=42, description="Seed for the data split, shuffling and LoRA initialisation.", examples=[42]
    )
    eval_sample_size: Annotated[int, Field(ge=0), BeforeValidator(_to_integer)] = Field(
        default=16,
        description="Eval records used for generation checks after training; 0 skips them.",
        examples=[16],
    )
    max_new_tokens: Annotated[int, Field(ge=1, le=32768), BeforeValidator(_to_integer)] = Field(
        default=256, description="Tokens generated per record in those generation checks.", examples=[256]
    )
    max_generated_tokens: Annotated[int, Field(ge=1, le=10_000_000), BeforeValidator(_to_integer)] = Field(
        default=4096,
        description="Bound on the tokens generated by those checks in all: only as many records as can "
        "each generate max_new_tokens within it are checked (the report says how many).",
        examples=[4096],
    )
    report_to: Annotated[list[ReportTarget], BeforeValidator(_to_report_list)] = Field(
        default_factory=lambda: list[ReportTarget](["tensorboard"]),
        description="Where training metrics are also written: tensorboard (OUTPUT_DIR/tensorboard), "
        "wandb, mlflow (each needs its package where the daemon runs); [] for none.",
        examples=[["tensorboard"], ["tensorboard", "wandb"]],
    )

    @property
    def precision(self) -> Precision:
        """The training precision: ``bf16``, ``fp16`` or ``fp32``."""
        if self.bf16:
            return "bf16"
        return "fp16" if self.fp16 else "fp32"


class LoraConfig(_Section):
    """The LoRA adapter."""

    rank: Annotated[int, Field(ge=1, le=1024), BeforeValidator(_to_integer)] = Field(
        default=8, description="Rank r of the update matrices.", examples=[8, 16, 64]
    )
    alpha: Annotated[float, Field(gt=0), BeforeValidator(_to_number)] = Field(
        default=16.0, description="Scaling numerator; the update is scaled by alpha / rank.", examples=[16]
    )
    dropout: Annotated[float, Field(ge=0, lt=1), BeforeValidator(_to_number)] = Field(
        default=0.1, description="Dropout on the adapter input.", examples=[0.05, 0.1]
    )
    target_modules: Annotated[list[ModuleName], Field(min_length=1), BeforeValidator(_to_module_list)] = (
        Field(
            default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
            description="Linear layers that get an adapter.",
            examples=[["q_proj", "k_proj", "v_proj", "o_proj"]],
        )
    )
    optimization_strategy: Annotated[OptimizationStrategy, BeforeValidator(_to_choice)] = Field(
        default="auto", description="Trade memory for quality when resolving auto settings."
    )


class DataConfig(_Section):
    """How the uploaded data set is read and split."""

    train_split_ratio: Annotated[float, Field(gt=0, le=1), BeforeValidator(_to_number)] = Field(
        default=0.9, description="Share of the records used for training.", examples=[0.9]
    )
    eval_split_ratio: Annotated[float, Field(ge=0, le=1), BeforeValidator(_to_number)] = Field(
        default=0.1, description="Share used for evaluation; the two ratios add up to 1.", examples=[0.1]
    )
    max_samples: Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_optional_integer)] = Field(
        default=None, description="Use at most this many records; null uses all.", examples=[None, 1000]
    )
    shuffle_data: Boolean = Field(default=True, description="Shuffle the records (seeded) before splitting.")
    data_format: Annotated[DataFormat, BeforeValidator(_to_choice)] = Field(
        default="alpaca", description="Record layout; auto detects it."
    )


class ParallelConfig(_Section):
    """Multi-GPU training."""

    strategy: Annotated[ParallelStrategy, BeforeValidator(_to_choice)] = Field(
        default="data_parallel",
        description=(
            "How work is spread over GPUs: data_parallel (DDP), sharded_data_parallel (FSDP2), "
            "model_parallel (tensor parallel), pipeline_parallel, hybrid_parallel (tensor parallel × FSDP2) "
            "or auto (the fastest that fits)."
        ),
    )
    world_size: Annotated[int, Field(ge=1), BeforeValidator(_to_integer)] = Field(
        default=1, description="Number of GPUs (processes) for one job.", examples=[1]
    )
    enable_distributed: Boolean = Field(
        default=False, description="Launch one process per GPU with torchrun."
    )
    nodes: Annotated[int, Field(ge=1), BeforeValidator(_to_integer)] = Field(
        default=1,
        description="Machines the world_size ranks span; above 1 the job runs on the Ray cluster the "
        "daemon is attached to (cryptotuned --ray-address), world_size / nodes ranks per machine.",
        examples=[1, 2],
    )
    tensor_parallel_size: Annotated[int, Field(ge=1), BeforeValidator(_to_integer)] = Field(
        default=1,
        description="GPUs that split each layer (model_parallel, hybrid_parallel); divides the KV heads.",
        examples=[1, 2],
    )
    pipeline_schedule: Annotated[PipelineSchedule, BeforeValidator(_to_choice)] = Field(
        default="1f1b", description="pipeline_parallel: micro-batch schedule, gpipe or 1f1b."
    )
    pipeline_micro_batches: Annotated[int, Field(ge=1), BeforeValidator(_to_integer)] = Field(
        default=2, description="pipeline_parallel: micro-batches each batch is cut into.", examples=[2]
    )


class SystemConfig(_Section):
    """Where outputs go and how much is logged."""

    output_dir: Annotated[str | None, Field(min_length=1), BeforeValidator(_to_optional_path_text)] = Field(
        default=None,
        description="Adapter, checkpoints and report; --output-dir wins over it, and without either the "
        "job writes to ./training_output. Relative paths are taken from the client's working directory "
        "(a remote client must give an absolute path).",
        examples=["./output"],
    )
    logging_dir: Annotated[str, Field(min_length=1), BeforeValidator(_to_path_text)] = Field(
        default="./logs",
        description="The worker's log (worker.log); relative to the output directory unless absolute.",
    )
    cache_dir: Annotated[str | None, Field(min_length=1), BeforeValidator(_to_optional_path_text)] = Field(
        default=None,
        description="Tokenized-data cache; relative to the output directory unless absolute; null shares "
        "the daemon's cache between jobs.",
        examples=["./cache"],
    )
    log_level: Annotated[LogLevel, BeforeValidator(_to_log_level)] = Field(
        default="INFO", description="Worker log verbosity (case-insensitive)."
    )


class CryptotuneConfig(BaseModel):
    """A cryptotune training config. Every section is optional; missing keys take their defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), title="cryptotune config")

    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    system: SystemConfig = Field(default_factory=SystemConfig)

    @property
    def precision(self) -> Precision:
        """The training precision: ``bf16``, ``fp16`` or ``fp32`` (bf16 wins if both flags are set)."""
        return self.training.precision


# Section name → model, in the order the manual and the template list them.
SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "training": TrainingConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "parallel": ParallelConfig,
    "system": SystemConfig,
}
