"""Turn one chat record, in any of the common dataset formats, into ultrachat's `messages` list.

Training reads a single schema (`[{"role": "system"|"user"|"assistant", "content": str}, ...]`),
but chat data on disk comes as OpenAI/ultrachat `messages`, ShareGPT `conversations`, Alpaca
`instruction`/`input`/`output` or plain `prompt`/`completion`. Converting here, one record at a
time, lets `train.prepare` say exactly which row is bad and why: a `RowError` carries a short
reason that a person can act on, and the caller adds the file and line.
"""

from __future__ import annotations

from typing import Any

from train.config import DataFormat

ROLES = ("system", "user", "assistant")
# ShareGPT speakers; "user"/"assistant" appear in some exports instead of "human"/"gpt".
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

# Keys that identify a format, checked in this order: ultrachat rows carry both `prompt` and
# `messages`, and must count as `messages`.
_DETECT = (
    (DataFormat.messages, ("messages",)),
    (DataFormat.sharegpt, ("conversations",)),
    (DataFormat.alpaca, ("instruction", "output")),
    (DataFormat.prompt_completion, ("prompt", "completion")),
)

Messages = list[dict[str, str]]


class RowError(ValueError):
    """One record that cannot be used; the message is the reason, without its location."""


def detect_format(record: Any) -> DataFormat:
    """The record's format from its keys (see `_DETECT` for the precedence). Keys with a value
    decide first: a CSV row of a table mixing formats has every column, the unused ones empty."""
    _require_object(record)
    filled = {key for key, value in record.items() if value != ""}
    for present in (filled, record):
        for name, keys in _DETECT:
            if any(key in present for key in keys):
                return name
    seen = ", ".join(sorted(map(str, record))) or "none"
    raise RowError(f"no known format ({', '.join(DataFormat)}) matches the keys: {seen}")


def to_messages(record: Any, format: DataFormat | str | None = None) -> Messages:
    """The record as a validated `messages` list; `format` overrides auto-detection."""
    forced = DataFormat(format) if format is not None else None  # ValueError for an unknown name
    _require_object(record)
    name = forced or detect_format(record)
    messages = _CONVERTERS[name](record)
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant turn")
    return messages


def _require_object(record: Any) -> None:
    if not isinstance(record, dict):
        raise RowError(f"record is not a JSON object (got {_kind(record)})")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{where} is not a string (got {_kind(value)})")
    if not value.strip():
        raise RowError(f"{where} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowError(f"{where} is not valid Unicode ({e.reason})") from None
    return value


def _field(record: dict, key: str, owner: str) -> Any:
    if key not in record:
        raise RowError(f"{owner} has no {key!r} field")
    return record[key]


def _required_text(record: dict, key: str, format: str) -> str:
    return _text(_field(record, key, f"{format} record"), key)


def _optional_text(record: dict, key: str) -> str:
    """An optional string field; absent, null and blank all mean "not given"."""
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise RowError(f"{key} is not a string (got {_kind(value)})")
    return value if value and value.strip() else ""


def _turns(record: dict, key: str) -> list:
    turns = _field(record, key, "record")
    if turns == "":  # an empty CSV cell
        raise RowError(f"{key!r} is empty")
    if not isinstance(turns, list):
        raise RowError(f"{key!r} is not a list (got {_kind(turns)})")
    if not turns:
        raise RowError(f"{key!r} is empty")
    return turns


def _from_turns(record: dict, key: str, role_key: str, content_key: str, roles: dict, noun: str) -> Messages:
    """Turn lists: `messages` (role/content) and ShareGPT `conversations` (from/value)."""
    messages = []
    for i, turn in enumerate(_turns(record, key)):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(f"{where} is not an object (got {_kind(turn)})")
        speaker = _field(turn, role_key, where)
        if not isinstance(speaker, str) or speaker not in roles:
            raise RowError(f"{where}: unknown {noun} {speaker!r} (expected {', '.join(roles)})")
        content = _text(_field(turn, content_key, where), f"{where} {content_key}")
        messages.append({"role": roles[speaker], "content": content})
    return messages


def _from_messages(record: dict) -> Messages:
    return _from_turns(record, "messages", "role", "content", {r: r for r in ROLES}, "role")


def _from_sharegpt(record: dict) -> Messages:
    return _from_turns(record, "conversations", "from", "value", SHAREGPT_ROLES, "speaker")


def _from_alpaca(record: dict) -> Messages:
    user = _required_text(record, "instruction", "alpaca")
    if extra := _optional_text(record, "input"):
        user += "\n\n" + extra
    messages = [{"role": "user", "content": user}]
    if system := _optional_text(record, "system"):
        messages.insert(0, {"role": "system", "content": system})
    messages.append({"role": "assistant", "content": _required_text(record, "output", "alpaca")})
    return messages


def _from_prompt_completion(record: dict) -> Messages:
    prompt = _required_text(record, "prompt", "prompt_completion")
    completion = _required_text(record, "completion", "prompt_completion")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


_CONVERTERS = {
    DataFormat.messages: _from_messages,
    DataFormat.sharegpt: _from_sharegpt,
    DataFormat.alpaca: _from_alpaca,
    DataFormat.prompt_completion: _from_prompt_completion,
}


def merge_system_into_first_user(messages: Messages) -> Messages:
    """A leading system message's text in front of the first user message, a blank line apart: what
    users of chat templates without a system role (early Phi-3-mini) do, instead of losing it."""
    if messages[0]["role"] != "system":
        return messages
    rest = messages[1:]
    first_user = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
    if first_user is None:
        return messages
    merged = {**rest[first_user], "content": f"{messages[0]['content']}\n\n{rest[first_user]['content']}"}
    return [*rest[:first_user], merged, *rest[first_user + 1 :]]
