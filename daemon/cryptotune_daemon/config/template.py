"""The commented config template (`cryptotune init-config`) and the config's JSON schema."""

from __future__ import annotations

import json
import textwrap
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from cryptotune_daemon.config.schema import SECTIONS, CryptotuneConfig

_HEADER = """\
# cryptotune config: LoRA fine-tuning of Qwen3 on Chinese cryptography Q&A.
# Every section and key is optional; a key left out takes the default written here.
# Check a config with `cryptotune validate-config FILE`. Values set to auto are resolved
# from the GPUs when the job starts (the job's resolved_config.yaml shows the outcome).
"""


def _float_text(value: float) -> str:
    """A float PyYAML reads back as a float: YAML 1.1 needs a dot and a signed exponent (2.0e-4, not 2e-4)."""
    text = repr(value)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{int(exponent):+d}"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            # "epochs: 3" reads better than "3.0"; the schema reads it back as the same float.
            return str(int(value))
        return _small_float(value) if 0 < abs(value) < 1e-3 else _float_text(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    # JSON string syntax is YAML double-quoted syntax for the ASCII defaults written here.
    return json.dumps(str(value))


def _small_float(value: float) -> str:
    # repr(0.0002) is "0.0002"; scientific notation reads better for learning rates.
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0")
    mantissa += "0" if mantissa.endswith(".") else ""
    text = f"{mantissa}e{int(exponent):+d}"
    return text if float(text) == value else _float_text(value)


def _comment(info: FieldInfo) -> str:
    text = info.description or ""
    if get_origin(info.annotation) is Literal:
        text += f" One of: {', '.join(str(choice) for choice in get_args(info.annotation))}."
    return text


def config_template() -> str:
    """A commented YAML config holding every key with its default.

    It validates with no errors and no warnings, and loads to exactly the defaults;
    ``model.trust_remote_code`` is written as false.

    Returns:
        The template text.
    """
    lines = [_HEADER.rstrip("\n")]
    for name, model in SECTIONS.items():
        defaults = model().model_dump(mode="python")
        doc = (model.__doc__ or "").strip().splitlines()
        lines.append("")
        if doc:
            lines.append(f"# {doc[0]}")
        lines.append(f"{name}:")
        for key, info in model.model_fields.items():
            lines.extend(f"  # {part}" for part in textwrap.wrap(_comment(info), width=96))
            lines.append(f"  {key}: {_scalar(defaults[key])}")
    return "\n".join(lines) + "\n"


def config_json_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of :class:`CryptotuneConfig`, for editors and other tools.

    Returns:
        The schema as a JSON-able dict.
    """
    schema = CryptotuneConfig.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
