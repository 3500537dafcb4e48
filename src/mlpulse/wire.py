"""The wire format: UTF-8 JSON events `{"id": ..., "body": ...}`, alone or in a batch frame.

A batch frame is a JSON array of events. Extra keys (`ts`, `model_version`, ...) are kept.
Ids are compared as canonical text: a string as it is, an integer in decimal, a float as
Python's `repr`, so `1` and `"1"` are the same id.
"""

from __future__ import annotations

import json
import math
import re
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

# Every number on the wire is finite and within this bound, so an error, its square and
# their sums stay finite in the aggregates (a Redis script is not rolled back).
MAX_ABS_VALUE = 1e100
# Ids and versions become Redis keys and CSV cells: bounded, and never a line break.
MAX_ID_CHARS = 1024
MAX_VERSION_CHARS = 128
# Integer ids must survive every JSON codec on the way (orjson writes at most 64 bits).
MIN_INT_ID, MAX_INT_ID = -(2**63), 2**64 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# orjson reads an integer beyond 64 bits as a float, so 2**64 + 1 and 2**64 + 2 would
# become one id (and one below -2**63 likewise). A float id this large may have been such
# an integer: its frame is read again by the exact parser, which tells them apart.
_INEXACT_ID = 2.0**63
# Versions seen valid, so the common case costs one lookup (bounded: versions are few).
_good_versions: set[str] = set()


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


class _ReadExactly(Exception):
    """The frame holds a value orjson may have rounded; read it with the exact parser."""


class _Invalid(ValueError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def canonical_id(value: Any) -> str:
    """The id as comparable text; raises `ValueError` for anything that is not an id.

    A string id is text of at most `MAX_ID_CHARS` characters with no control character
    (so a log line is always one record); an integer id fits in 64 bits."""
    kind = type(value)
    if kind is str:
        if not value:
            raise ValueError("id is an empty string")
        if len(value) > MAX_ID_CHARS:
            raise ValueError(f"id is longer than {MAX_ID_CHARS} characters")
        # Printable text holds no control character; only other text is searched for one.
        if not value.isprintable() and _CONTROL.search(value):
            raise ValueError("id contains a control character (such as a line break)")
        if not value.isascii() and not _is_unicode(value):
            raise ValueError("id is not valid Unicode text (a lone surrogate)")
        return str(value)
    if kind is int:
        if not MIN_INT_ID <= value <= MAX_INT_ID:
            raise ValueError("id is an integer beyond 64 bits: send it as a string")
        return str(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError("id is NaN or infinite")
        return repr(value)
    raise ValueError(f"id must be a string or a number, not {_json_type(value)}")


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", type(None): "null", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def finite_number(value: Any, where: str) -> float:
    """A JSON number that is finite; a `ValueError` saying what `where` holds otherwise."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise _Invalid("not_finite", f"{where} is NaN or infinite")
    elif kind is int:
        try:
            value = float(value)
        except OverflowError:
            raise _Invalid("not_finite", f"{where} is too large for a float") from None
    else:
        raise _Invalid("not_numeric", f"{where} must be a number, not {_json_type(value)}")
    if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
        raise _Invalid("out_of_range", f"{where} is beyond ±{MAX_ABS_VALUE:g}")
    return float(value)


def number_body(body: Any) -> float:
    """A y_true or y_pred body: one finite number."""
    return finite_number(body, "body")


def features_body(body: Any, n_features: int | None) -> list[float]:
    """A features body: a list of finite numbers, `n_features` long when that is known."""
    if type(body) is not list:
        raise _Invalid("not_numeric", f"body must be a list of numbers, not {_json_type(body)}")
    if n_features is not None and len(body) != n_features:
        raise _Invalid("wrong_length", f"expected {n_features} features, got {len(body)}")
    # The usual vector, floats only, is checked in C: a sum is finite only if every
    # element is. Anything else is checked element by element, for a reason naming it.
    if body and all(type(x) is float for x in body) and math.isfinite(sum(body)) \
            and max(map(abs, body)) <= MAX_ABS_VALUE:
        return body
    return [finite_number(x, f"body[{i}]") for i, x in enumerate(body)]


def _loads(raw: bytes) -> tuple[Any, bool]:
    """The document, and whether it was read by the exact (slower) parser."""
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError as exc:
        orjson_error = exc
    return _loads_exactly(raw, orjson_error)


def _loads_exactly(raw: bytes, orjson_error: orjson.JSONDecodeError | None) -> tuple[Any, bool]:
    # The standard parser keeps big integers exact and reads what orjson refuses: NaN and
    # Infinity (Python's json writes them by default) and lone surrogates. Such an element
    # is then refused for its value, with a reason that says so, not as "not JSON".
    try:
        return json.loads(raw), True
    except (ValueError, RecursionError) as exc:
        raise _Invalid("not_json", f"not JSON: {orjson_error or exc}") from None


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
        doc, exact = _loads(raw)
    except _Invalid as exc:
        return [], [Rejected(exc.code, exc.reason, raw)]
    try:
        return _events(doc, raw, numeric, n_features, exact)
    except _ReadExactly:
        return _events(_loads_exactly(raw, None)[0], raw, numeric, n_features, True)


def _events(doc: Any, raw: bytes, numeric: bool, n_features: int | None,
            exact: bool) -> tuple[list[Event], list[Rejected]]:
    if isinstance(doc, list):
        items, single = doc, False
    else:
        items, single = [doc], True
    events: list[Event] = []
    rejected: list[Rejected] = []
    for item in items:
        try:
            events.append(_event(item, numeric, n_features, exact))
        except _Invalid as exc:
            payload = raw if single else _dumps_lenient(item)
            rejected.append(Rejected(exc.code, exc.reason, payload))
    return events, rejected


def _event(item: Any, numeric: bool, n_features: int | None, exact: bool) -> Event:
    if type(item) is not dict:
        raise _Invalid("bad_shape", f'an event must be an object {{"id", "body"}}, not '
                       f"{_json_type(item)}")
    if "id" not in item:
        raise _Invalid("no_id", 'the event has no "id"')
    if "body" not in item:
        raise _Invalid("no_body", 'the event has no "body"')
    raw_id = item["id"]
    # The common cases first, inline: this runs for every event on every queue.
    if type(raw_id) is str and 0 < len(raw_id) <= MAX_ID_CHARS and raw_id.isascii() \
            and raw_id.isprintable():
        cid = raw_id
    else:
        if type(raw_id) is float and not exact and abs(raw_id) >= _INEXACT_ID:
            raise _ReadExactly
        try:
            cid = canonical_id(raw_id)
        except ValueError as exc:
            raise _Invalid("bad_id", str(exc)) from None
    body = item["body"]
    if not numeric:
        body = features_body(body, n_features)
    elif type(body) is not float or not -MAX_ABS_VALUE <= body <= MAX_ABS_VALUE:
        body = number_body(body)
    if len(item) == 2:
        return Event(cid, raw_id, body, {})
    extra = {k: v for k, v in item.items() if k != "id" and k != "body"}
    version = extra.get("model_version")
    if exact or (version is not None and (type(version) is not str
                                          or version not in _good_versions)) \
            or _has_container(extra):
        _check_extra(extra, exact)
    return Event(cid, raw_id, body, extra)


def _check_extra(extra: dict[str, Any], exact: bool) -> None:
    """Extra keys are kept and sent on, so each must survive being written again."""
    version = extra.get("model_version")
    if version is not None:
        if not _is_version(version):
            raise _Invalid("bad_extra", "model_version must be text of at most "
                           f"{MAX_VERSION_CHARS} characters without control characters")
        if not exact and type(version) is str and len(_good_versions) < 256:
            _good_versions.add(version)
    # What orjson read, it writes back, but for containers nested deeper than it writes.
    # What the exact parser read may hold big integers, non-finite numbers or lone
    # surrogates: each is refused here, not in the middle of a batch further on.
    if exact or _has_container(extra):
        try:
            orjson.dumps(extra)
            if exact:
                json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise _Invalid("bad_extra", f"an extra key cannot be kept: {exc}") from None


def _has_container(extra: dict[str, Any]) -> bool:
    for value in extra.values():
        if type(value) is dict or type(value) is list:
            return True
    return False


def _is_version(version: Any) -> bool:
    if type(version) is int:
        return True
    return (type(version) is str and 0 < len(version) <= MAX_VERSION_CHARS
            and not _CONTROL.search(version) and _is_unicode(version))


def _dumps_lenient(item: Any) -> bytes:
    # The element came from valid JSON (possibly with NaN), so the stdlib can always write it.
    return json.dumps(item, separators=(",", ":")).encode()


def encode(doc: Any) -> bytes:
    """Serialise one event, a batch frame or an envelope."""
    return orjson.dumps(doc)
