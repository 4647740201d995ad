"""Converts a sharegpt record ({conversations: [{from, value}, ...]})."""

from __future__ import annotations

from functools import partial
from typing import Any

from cryptotune_daemon.data.readers.chat import _pair, _qa_content, _qa_record, _turn_text
from cryptotune_daemon.data.readers.record_checks import (
    _MEDIA_KEYS,
    _check_media,
    _check_system,
    _check_tools,
    _Checks,
    _Invalid,
)
from cryptotune_daemon.data.readers.shapes import _json_type
from cryptotune_daemon.data.records import Record

_SHAREGPT_KEYS = frozenset({"conversations", "tools", "system", *_MEDIA_KEYS})
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "tool_call",
    "observation": "tool",
    "tool": "tool",
}


def _sharegpt_pair(conversations: Any, checks: _Checks) -> tuple[str, str]:
    """The question and reply of a conversation; raises at its first structural problem.

    A problem with a leading system turn's text goes to ``checks`` and the rest is still checked.
    """
    if conversations is None:
        raise _Invalid(
            "conversations", "missing required field 'conversations' (a list of {from, value} turns)"
        )
    if not isinstance(conversations, list):
        raise _Invalid(
            "conversations",
            f"'conversations' must be a list of {{from, value}} turns, got {_json_type(conversations)}",
        )
    turns: list[tuple[int, str, str]] = []
    for number, turn in enumerate(conversations, start=1):
        if not isinstance(turn, dict):
            raise _Invalid(
                "conversations",
                f"turn {number} is {_json_type(turn)}; expected an object with 'from' and 'value'",
            )
        raw_role = turn.get("from", turn.get("role"))
        if not isinstance(raw_role, str):
            raise _Invalid("conversations", f"turn {number} has no 'from' role string")
        role = _SHAREGPT_ROLES.get(raw_role)
        if role is None:
            raise _Invalid(
                "conversations",
                f"turn {number} has unknown role '{raw_role}' "
                "(expected human, gpt, system, function_call or observation)",
            )
        if role in ("tool_call", "tool"):
            raise _Invalid(
                "conversations",
                f"turn {number} has role '{raw_role}': tool calls are not supported; "
                "keep only records made of one 'human' turn and one 'gpt' turn",
            )
        text = _turn_text(
            turn.get("value", turn.get("content")), "conversations", f"turn {number}", allow_parts=False
        )
        if role == "system":
            if number != 1:
                raise _Invalid(
                    "conversations", f"turn {number} has role 'system': only a leading system turn is allowed"
                )
            checks.run(partial(_check_system, text, "a system turn"), None)
            continue
        turns.append((number, role, text))
    return _pair(turns, "conversations", "turn", "human", "gpt")


def _from_sharegpt(obj: dict[str, Any], index: int, line: int) -> Record:
    checks = _Checks()
    _check_media(obj, checks)
    pair = checks.run(lambda: _sharegpt_pair(obj.get("conversations"), checks), None)
    content = _qa_content(pair, "conversations", checks, reasoning=None)
    checks.run(lambda: _check_tools(obj.get("tools")), None)
    checks.run(lambda: _check_system(obj.get("system"), "'system'"), None)
    checks.done()
    return _qa_record(obj, index, line, content, _SHAREGPT_KEYS)
