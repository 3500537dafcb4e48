"""The wire format: UTF-8 JSON events `{"id": ..., "body": ...}`, alone or in a batch frame.

A batch frame is a JSON array of events. Extra keys (`ts`, `model_version`, ...) are kept.
Ids are compared as canonical text: a string as it is, an integer in decimal, a float as
Python's `repr`, so `1` and `"1"` are the same id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

FEATURES = "features"
Y_TRUE = "y_true"
Y_PRED = "y_pred"
DEAD_QUEUE = "mlpulse.dead"
EVENTS_EXCHANGE = "mlpulse.events"
DATA_QUEUES = (FEATURES, Y_TRUE, Y_PRED)

REASON_HEADER = "x-mlpulse-reason"
QUEUE_HEADER = "x-mlpulse-queue"
CODE_HEADER = "x-mlpulse-code"


@dataclass(slots=True)
class Event:
    """One decoded event: canonical id, the id as sent, a validated body, and extra keys."""

    id: str
    raw_id: Any
    body: Any
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Rejected:
    """Something that cannot be processed, with a short code and a sentence for people."""

    code: str
    reason: str
    payload: bytes


class _Invalid(ValueError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def canonical_id(value: Any) -> str:
    """The id as comparable text; raises `ValueError` for anything that is not an id."""
    kind = type(value)
    if kind is str:
        if not value:
            raise ValueError("id is an empty string")
        return str(value)
    if kind is int:
        return str(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError("id is NaN or infinite")
        return repr(value)
    raise ValueError(f"id must be a string or a number, not {_json_type(value)}")


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", type(None): "null", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def finite_number(value: Any, where: str) -> float:
    """A JSON number that is finite; a `ValueError` saying what `where` holds otherwise."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise _Invalid("not_finite", f"{where} is NaN or infinite")
        return float(value)
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise _Invalid("not_finite", f"{where} is too large for a float") from None
    raise _Invalid("not_numeric", f"{where} must be a number, not {_json_type(value)}")


def number_body(body: Any) -> float:
    """A y_true or y_pred body: one finite number."""
    return finite_number(body, "body")


def features_body(body: Any, n_features: int | None) -> list[float]:
    """A features body: a list of finite numbers, `n_features` long when that is known."""
    if type(body) is not list:
        raise _Invalid("not_numeric", f"body must be a list of numbers, not {_json_type(body)}")
    if n_features is not None and len(body) != n_features:
        raise _Invalid("wrong_length", f"expected {n_features} features, got {len(body)}")
    return [finite_number(x, f"body[{i}]") for i, x in enumerate(body)]


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        orjson_error = exc
    # Python's json writes NaN and Infinity by default; accept them here so that such a
    # message is refused for its value, with a reason that says so, not as "not JSON".
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise _Invalid("not_json", f"not JSON: {orjson_error}") from None


def decode_frame(
    raw: bytes,
    *,
    numeric: bool,
    n_features: int | None = None,
    max_bytes: int | None = None,
) -> tuple[list[Event], list[Rejected]]:
    """Decode one message into events; bad elements of a batch are rejected one by one.

    `numeric` selects a number body (y_true, y_pred); otherwise a features body.
    """
    if max_bytes is not None and len(raw) > max_bytes:
        reason = f"message is {len(raw)} bytes, the limit is {max_bytes}"
        return [], [Rejected("too_large", reason, raw)]
    try:
        doc = _loads(raw)
    except _Invalid as exc:
        return [], [Rejected(exc.code, exc.reason, raw)]
    if isinstance(doc, list):
        items, single = doc, False
    else:
        items, single = [doc], True
    events: list[Event] = []
    rejected: list[Rejected] = []
    for item in items:
        try:
            events.append(_event(item, numeric, n_features))
        except _Invalid as exc:
            payload = raw if single else _dumps_lenient(item)
            rejected.append(Rejected(exc.code, exc.reason, payload))
    return events, rejected


def _event(item: Any, numeric: bool, n_features: int | None) -> Event:
    if type(item) is not dict:
        raise _Invalid("bad_shape", f'an event must be an object {{"id", "body"}}, not '
                       f"{_json_type(item)}")
    if "id" not in item:
        raise _Invalid("no_id", 'the event has no "id"')
    if "body" not in item:
        raise _Invalid("no_body", 'the event has no "body"')
    raw_id = item["id"]
    try:
        cid = canonical_id(raw_id)
    except ValueError as exc:
        raise _Invalid("bad_id", str(exc)) from None
    body = number_body(item["body"]) if numeric else features_body(item["body"], n_features)
    extra = {k: v for k, v in item.items() if k != "id" and k != "body"} if len(item) > 2 else {}
    return Event(cid, raw_id, body, extra)


def _dumps_lenient(item: Any) -> bytes:
    # The element came from valid JSON (possibly with NaN), so the stdlib can always write it.
    return json.dumps(item, separators=(",", ":")).encode()


def encode(doc: Any) -> bytes:
    """Serialise one event, a batch frame or an envelope."""
    return orjson.dumps(doc)
