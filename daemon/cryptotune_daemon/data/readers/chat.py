"""What the sharegpt and openai converters share: turns → one question/reply pair → a Record."""

from __future__ import annotations

from typing import Any

from cryptotune_daemon.data.readers.record_checks import (
    _check_control_tokens,
    _Checks,
    _Invalid,
    _split_think,
)
from cryptotune_daemon.data.readers.shapes import _json_type
from cryptotune_daemon.data.records import Record


def _turn_text(value: Any, field: str, where: str, *, allow_parts: bool) -> str:
    if isinstance(value, str):
        return value
    if allow_parts and isinstance(value, list):
        # OpenAI content parts: only text parts can be trained.
        texts: list[str] = []
        for part in value:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else _json_type(part)
                raise _Invalid(
                    field, f"{where} has a content part of type '{kind}': only text parts are supported"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise _Invalid(field, f"{where} must have string content, got {_json_type(value)}")


def _pair(
    roles: list[tuple[int, str, str]], field: str, noun: str, user: str, assistant: str
) -> tuple[str, str]:
    """Checks the turns are exactly one user turn then one assistant turn; returns their texts."""
    if not roles:
        raise _Invalid(
            field,
            f"the record has no {noun}s: expected one '{user}' {noun} followed by one '{assistant}' {noun}",
        )
    first_number, first_role, _ = roles[0]
    if first_role != "user":
        raise _Invalid(
            field,
            f"{noun} {first_number} has role '{assistant}': "
            f"the conversation must start with a '{user}' {noun}",
        )
    if len(roles) == 1:
        raise _Invalid(
            field, f"the record has only a '{user}' {noun}: add the '{assistant}' {noun} that answers it"
        )
    if len(roles) > 2:
        questions = sum(1 for _, role, _ in roles if role == "user")
        raise _Invalid(
            field,
            f"the record has {len(roles)} {noun}s ({questions} questions): multi-turn conversations are not "
            f"supported; split it into records of one '{user}' {noun} and one '{assistant}' {noun}",
        )
    second_number, second_role, _ = roles[1]
    if second_role != "assistant":
        raise _Invalid(
            field, f"{noun} {second_number} has role '{user}': expected the '{assistant}' {noun} answering it"
        )
    return roles[0][2], roles[1][2]


def _check_question(question: str, field: str) -> None:
    if not question.strip():
        raise _Invalid(field, "the question is empty; give it a non-empty text or remove the record")
    _check_control_tokens(field, question, "the question")


def _split_reply(reply: str, field: str, reasoning: str | None) -> tuple[str, str, bool]:
    """(reasoning, answer, has_thinking) of a checked reply."""
    if reasoning is not None:
        # Like the official template: an explicit reasoning_content wins over think tags in the content.
        answer = reply
        thought = reasoning.strip("\n")
        has_thinking = bool(thought.strip())
    else:
        thought, answer, has_thinking = _split_think(reply, field, "the answer")
    if not answer.strip():
        raise _Invalid(field, "the answer is empty; give it a non-empty text or remove the record")
    for label, text in (("the reasoning", thought), ("the answer", answer)):
        _check_control_tokens(field, text, label)
    return thought, answer, has_thinking


def _qa_content(
    pair: tuple[str, str] | None, field: str, checks: _Checks, *, reasoning: str | None
) -> tuple[str, str, str, bool]:
    """(question, reasoning, answer, has_thinking) of a question/reply pair (None: its shape was wrong).

    The question and the reply are checked independently; their problems go to ``checks``.
    """
    if pair is None:
        return "", "", "", False
    question, reply = pair
    checks.run(lambda: _check_question(question, field), None)
    thought, answer, has_thinking = checks.run(lambda: _split_reply(reply, field, reasoning), ("", "", False))
    return question, thought, answer, has_thinking


def _qa_record(
    obj: dict[str, Any], index: int, line: int, content: tuple[str, str, str, bool], known: frozenset[str]
) -> Record:
    question, thought, answer, has_thinking = content
    return Record(
        index=index,
        line=line,
        instruction=question,
        input="",
        output=answer,
        reasoning=thought,
        has_thinking=has_thinking,
        extra={key: value for key, value in obj.items() if key not in known},
    )
