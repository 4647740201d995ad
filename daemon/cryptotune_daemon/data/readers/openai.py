"""Converts an OpenAI messages record ({messages: [{role, content}, ...]})."""

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

_OPENAI_KEYS = frozenset({"messages", "tools", *_MEDIA_KEYS})
_OPENAI_ROLES = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


def _openai_pair(messages: Any, checks: _Checks) -> tuple[tuple[str, str], str | None]:
    """The question and reply of a message list, and the reply's reasoning_content (None when absent).

    Raises at the first structural problem; problems with a leading system message's text or
    with reasoning_content go to ``checks`` and the rest is still checked.
    """
    if messages is None:
        raise _Invalid("messages", "missing required field 'messages' (a list of {role, content} messages)")
    if not isinstance(messages, list):
        raise _Invalid(
            "messages", f"'messages' must be a list of {{role, content}} messages, got {_json_type(messages)}"
        )
    turns: list[tuple[int, str, str]] = []
    reasoning: str | None = None
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise _Invalid(
                "messages",
                f"message {number} is {_json_type(message)}; expected an object with 'role' and 'content'",
            )
        raw_role = message.get("role")
        if not isinstance(raw_role, str):
            raise _Invalid("messages", f"message {number} has no 'role' string")
        role = _OPENAI_ROLES.get(raw_role)
        if role is None:
            raise _Invalid(
                "messages",
                f"message {number} has unknown role '{raw_role}' (expected system, user, assistant or tool)",
            )
        if role == "tool" or message.get("tool_calls") or message.get("function_call"):
            what = f"role '{raw_role}'" if role == "tool" else "tool_calls"
            raise _Invalid(
                "messages",
                f"message {number} has {what}: tool calls are not supported; keep only records made of one "
                "'user' message and one 'assistant' message",
            )
        text = _turn_text(message.get("content"), "messages", f"message {number}", allow_parts=True)
        if role == "system":
            if number != 1:
                raise _Invalid(
                    "messages",
                    f"message {number} has role '{raw_role}': only a leading system message is allowed",
                )
            checks.run(partial(_check_system, text, "a system message"), None)
            continue
        if role == "assistant":
            value = message.get("reasoning_content")
            if value is not None and not isinstance(value, str):
                checks.add(
                    "messages",
                    f"message {number}: 'reasoning_content' must be a string, got {_json_type(value)}",
                )
            else:
                reasoning = value
        turns.append((number, role, text))
    return _pair(turns, "messages", "message", "user", "assistant"), reasoning


def _from_openai(obj: dict[str, Any], index: int, line: int) -> Record:
    checks = _Checks()
    _check_media(obj, checks)
    no_pair: tuple[tuple[str, str] | None, str | None] = (None, None)
    pair, reasoning = checks.run(lambda: _openai_pair(obj.get("messages"), checks), no_pair)
    content = _qa_content(pair, "messages", checks, reasoning=reasoning)
    checks.run(lambda: _check_tools(obj.get("tools")), None)
    checks.done()
    return _qa_record(obj, index, line, content, _OPENAI_KEYS)
