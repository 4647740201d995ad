"""The document's shape, then each section's keys validated against the schema on their own."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ValidationError

from cryptotune_daemon.config.issues import _Collector
from cryptotune_daemon.config.messages import _field_message, _unknown_key_message, _unknown_section_message
from cryptotune_daemon.config.schema import SECTIONS, CryptotuneConfig, describe_value


def _key_name(key: Any) -> str:
    if isinstance(key, str):
        return key
    return describe_value(key).strip("'")


def _split_sections(data: Any, out: _Collector) -> dict[str, dict[str, Any]]:
    """Checks the document's shape; returns each well-formed section with its known keys only."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        out.error(
            (),
            f"a config must be a YAML mapping of sections ({', '.join(SECTIONS)}), "
            f"got {describe_value(data)}; start from `cryptotune init-config`",
        )
        return {}
    sections: dict[str, dict[str, Any]] = {}
    for raw_key, value in data.items():
        key = _key_name(raw_key)
        if key not in SECTIONS:
            out.error((key,), functools.partial(_unknown_section_message, key))
            continue
        if value is None:
            # `training:` with nothing under it: the section's defaults.
            sections[key] = {}
            continue
        if not isinstance(value, dict):
            out.failed.add(key)
            example = next(iter(SECTIONS[key].model_fields))
            out.error(
                (key,),
                f"section '{key}' must be a mapping of keys (e.g. '{example}: ...' indented under "
                f"'{key}:'), got {describe_value(value)}",
            )
            continue
        known: dict[str, Any] = {}
        for raw_name, item in value.items():
            name = _key_name(raw_name)
            if name in SECTIONS[key].model_fields:
                known[name] = item
            else:
                out.error((key, name), functools.partial(_unknown_key_message, key, name))
        sections[key] = known
    return sections


def _validate_sections(raw: dict[str, dict[str, Any]], out: _Collector) -> CryptotuneConfig:
    """Validates each section on its own, so one bad key does not hide the errors of the others.

    Keys that fail take their defaults in the returned config and are recorded in ``out.failed``,
    so that cross-field checks and warnings can still run on the keys that are fine.
    """
    parsed: dict[str, BaseModel] = {}
    for section, model in SECTIONS.items():
        values = raw.get(section, {})
        try:
            parsed[section] = model.model_validate(values)
            continue
        except ValidationError as failure:
            for error in failure.errors():
                name = str(error["loc"][0]) if error["loc"] else ""
                if name not in model.model_fields:  # pragma: no cover - unknown keys were removed earlier
                    out.failed.add(section)
                    out.error((section,), f"invalid section: {error['msg']}")
                    continue
                out.failed.add(f"{section}.{name}")
                out.error((section, *error["loc"]), _field_message(model, error))
        good = {key: value for key, value in values.items() if f"{section}.{key}" not in out.failed}
        try:
            parsed[section] = model.model_validate(good)
        except ValidationError:  # pragma: no cover - fields are validated independently
            out.failed.add(section)
            parsed[section] = model()
    return CryptotuneConfig.model_validate(parsed)
