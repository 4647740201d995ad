"""The wording of config errors: unknown sections and keys (with did-you-mean), bad values as sentences."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from cryptotune_daemon.config.schema import SECTIONS, describe_value

# Keys from LLaMA-Factory, axolotl and transformers that users carry over; mapped to ours.
_ALIASES: dict[str, str] = {
    "lr": "training.learning_rate",
    "epochs": "training.num_train_epochs",
    "num_epochs": "training.num_train_epochs",
    "batch_size": "training.per_device_train_batch_size",
    "micro_batch_size": "training.per_device_train_batch_size",
    "train_batch_size": "training.per_device_train_batch_size",
    "gradient_accumulation": "training.gradient_accumulation_steps",
    "evaluation_strategy": "training.eval_strategy",
    "cutoff_len": "training.max_seq_length",
    "sequence_len": "training.max_seq_length",
    "max_length": "training.max_seq_length",
    "max_seq_len": "training.max_seq_length",
    "r": "lora.rank",
    "lora_r": "lora.rank",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target": "lora.target_modules",
    "lora_target_modules": "lora.target_modules",
    "model_name_or_path": "model.model_name",
    "base_model": "model.model_name",
    "revision": "model.model_revision",
    "num_gpus": "parallel.world_size",
    "nproc_per_node": "parallel.world_size",
}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_TYPE_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
}


def _close(word: str, candidates: Iterable[str]) -> str | None:
    # Long keys are junk; difflib is quadratic in their length.
    matches = difflib.get_close_matches(word[:100].lower(), list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _owner_of(key: str) -> tuple[str, str] | None:
    """(section, field) a key belongs to: an exact field name, or a known alias from other tools."""
    for section, model in SECTIONS.items():
        if key in model.model_fields:
            return section, key
    if key.lower() in _ALIASES:
        section, name = _ALIASES[key.lower()].split(".")
        return section, name
    return None


def _unknown_section_message(key: str) -> str:
    owner = _owner_of(key)
    if owner is not None:
        section, name = owner
        called = "" if name == key else f" (cryptotune calls it '{name}')"
        return (
            f"'{key}' is not a section: it belongs in section '{section}'{called}; "
            f"indent it under '{section}:'"
        )
    match = _close(key, SECTIONS)
    if match is not None:
        return f"unknown section '{key}'; did you mean '{match}'?"
    return f"unknown section '{key}'; the sections are: {', '.join(SECTIONS)}"


def _unknown_key_message(section: str, key: str) -> str:
    fields = SECTIONS[section].model_fields
    owner = _owner_of(key)
    if owner is not None:
        home, name = owner
        if home == section:
            return f"unknown key '{key}' in section '{section}'; cryptotune calls it '{name}'"
        called = "" if name == key else f" (as '{name}')"
        return f"'{key}' belongs in section '{home}'{called}, not '{section}'; move it there"
    match = _close(key, fields)
    if match is not None:
        return f"unknown key '{key}' in section '{section}'; did you mean '{match}'?"
    for other, model in SECTIONS.items():
        match = _close(key, model.model_fields)
        if other != section and match is not None:
            return f"unknown key '{key}' in section '{section}'; did you mean '{match}' in section '{other}'?"
    return f"unknown key '{key}' in section '{section}'; the keys of '{section}' are: {', '.join(fields)}"


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_BOUND_WORDS = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}


def _range_phrase(info: FieldInfo, error: ErrorDetails) -> str:
    """Range wording such as "must be between 1 and 1024", from the field's bounds."""
    bounds: dict[str, Any] = {}
    for constraint in info.metadata:
        for kind in _BOUND_WORDS:
            if getattr(constraint, kind, None) is not None:
                bounds[kind] = getattr(constraint, kind)
    # Bounds nested inside an Optional are not on the field; the error's context names the one broken.
    if not bounds:
        bounds = {kind: value for kind, value in (error.get("ctx") or {}).items() if kind in _BOUND_WORDS}
    if "ge" in bounds and "le" in bounds:
        return f"must be between {bounds['ge']} and {bounds['le']}"
    parts = [f"{_BOUND_WORDS[kind]} {bounds[kind]}" for kind in _BOUND_WORDS if kind in bounds]
    return "must be " + " and ".join(parts) if parts else "is out of range"


def _example_text(example: Any) -> str:
    if isinstance(example, list):
        return "[" + ", ".join(str(item) for item in example) + "]"
    return describe_value(example)


def _examples(info: FieldInfo) -> str:
    shown = [_example_text(example) for example in info.examples or [] if example is not None]
    if not shown:
        return ""
    listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
    return f"; for example {listed}"


def _choices(info: FieldInfo) -> list[str]:
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return [str(choice) for choice in get_args(annotation)]
    return []


def _field_message(model: type[BaseModel], error: ErrorDetails) -> str:
    """A plain sentence for one pydantic error; pydantic's own wording never reaches users."""
    kind = error["type"]
    value = error.get("input")
    name = str(error["loc"][0])
    info = model.model_fields[name]
    item = next((part for part in error["loc"][1:] if isinstance(part, int)), None)
    prefix = f"item {item + 1}: " if item is not None else ""
    if kind.startswith("ct_"):
        return prefix + error["msg"]
    if kind in _RANGE_ERRORS:
        return f"{prefix}{_range_phrase(info, error)}, got {describe_value(value)}{_examples(info)}"
    if kind == "literal_error":
        choices = _choices(info)
        message = f"must be one of {', '.join(choices)}; got {describe_value(value)}"
        match = _close(value, choices) if isinstance(value, str) else None
        return message + (f"; did you mean '{match}'?" if match else "")
    if kind == "too_short":
        return f"must not be empty{_examples(info)}"
    if kind == "string_too_short":
        return "must not be empty" + _examples(info)
    if kind == "string_pattern_mismatch":
        return f"{prefix}has an invalid form, got {describe_value(value)}{_examples(info)}"
    if kind in _TYPE_MESSAGES:
        return f"{prefix}{_TYPE_MESSAGES[kind]}, got {describe_value(value)}"
    return f"{prefix}invalid value {describe_value(value)} ({error['msg']})"
