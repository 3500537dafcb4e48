"""Pure logic of the wire format: canonical ids, validation, batch frames."""

from __future__ import annotations

import json

import pytest

from mlpulse.wire import canonical_id, decode_frame


@pytest.mark.parametrize(("raw", "text"), [
    ("abc", "abc"), (1, "1"), (-7, "-7"), (1.0, "1.0"), (0.1, "0.1"),
    (1700000000.123456, "1700000000.123456"), (2**64 - 1, str(2**64 - 1)),
    (-(2**63), str(-(2**63))), ("a,\"b\" é ✓", "a,\"b\" é ✓"),
])
def test_canonical_id(raw: object, text: str) -> None:
    assert canonical_id(raw) == text


@pytest.mark.parametrize("raw", [True, None, [], {}, float("nan"), float("inf"), "", "a\nb",
                                 "a\rb", "\x00", "\x85", "\ud800", "x" * 1025, 2**64,
                                 -(2**63) - 1, 10**30])
def test_not_an_id(raw: object) -> None:
    with pytest.raises(ValueError, match="id"):
        canonical_id(raw)


@pytest.mark.parametrize(("body", "code"), [
    (b"not json", "not_json"),
    (b'{"body": 1}', "no_id"),
    (b'{"id": 1}', "no_body"),
    (b'{"id": true, "body": 1}', "bad_id"),
    (b'{"id": 1, "body": "1.5"}', "not_numeric"),
    (b'{"id": 1, "body": true}', "not_numeric"),
    (b'{"id": 1, "body": NaN}', "not_finite"),
    (b'{"id": 1, "body": -Infinity}', "not_finite"),
    (b'{"id": 1, "body": 1e999}', "not_finite"),
    (b"[1, 2]", "bad_shape"),
])
def test_bad_numeric_events_are_rejected_with_a_code(body: bytes, code: str) -> None:
    events, rejected = decode_frame(body, numeric=True)
    assert not events
    assert [r.code for r in rejected] == [code] * len(rejected)
    assert rejected[0].reason


def test_features_are_checked_for_length_and_values() -> None:
    frame = json.dumps([
        {"id": "a", "body": [1, 2, 3]},
        {"id": "b", "body": [1, 2]},
        {"id": "c", "body": [1, "x", 3]},
        {"id": "d", "body": 5},
    ]).encode()
    events, rejected = decode_frame(frame, numeric=False, n_features=3)
    assert [e.id for e in events] == ["a"]
    assert events[0].body == [1.0, 2.0, 3.0]
    assert [r.code for r in rejected] == ["wrong_length", "not_numeric", "not_numeric"]
    assert "expected 3 features, got 2" in rejected[0].reason
    # Only the bad element goes to the dead-letter queue, not the whole frame.
    assert json.loads(rejected[0].payload) == {"id": "b", "body": [1, 2]}


def test_oversized_message_is_rejected_before_parsing() -> None:
    events, rejected = decode_frame(b'{"id": 1, "body": 1}' + b" " * 100, numeric=True,
                                    max_bytes=50)
    assert not events
    assert rejected[0].code == "too_large"
    assert "limit is 50" in rejected[0].reason


def test_extra_keys_are_kept_and_ids_keep_their_sent_form() -> None:
    events, _ = decode_frame(b'{"id": 1.5, "body": 2, "ts": 3.0, "model_version": "v2"}',
                             numeric=True)
    assert events[0].id == "1.5"
    assert events[0].raw_id == 1.5
    assert events[0].extra == {"ts": 3.0, "model_version": "v2"}


# Each class of poison an adversarial review found, as the raw bytes that carried it.
POISON = {
    "newline in model_version": (b'{"id": "v", "body": 1, "model_version": "v1\\nx"}',
                                 "bad_extra"),
    "CR in an id": (b'{"id": "a\\rb", "body": 1}', "bad_id"),
    "LF in an id": (b'{"id": "a\\nb", "body": 1}', "bad_id"),
    "lone surrogate in an id": (b'{"id": "\\ud800", "body": 1}', "bad_id"),
    "lone surrogate in an extra": (b'{"id": "s", "body": 1, "note": "\\udfff"}', "bad_extra"),
    "extra nested 300 deep": (b'{"id": "d", "body": 1, "x": ' + b"[" * 300 + b"]" * 300 + b"}",
                              "bad_extra"),
    "ts too large for a float": (b'{"id": "t", "body": 1, "ts": 1' + b"0" * 400 + b"}",
                                 "bad_extra"),
    "ts of 1e400": (b'{"id": "t", "body": 1, "ts": 1e400}', "bad_extra"),
    "model_version not text": (b'{"id": "m", "body": 1, "model_version": ["v1"]}', "bad_extra"),
    "label whose square overflows": (b'{"id": "o", "body": 1.4e154}', "out_of_range"),
    "integer id beyond 64 bits": (b'{"id": 18446744073709551617, "body": 1}', "bad_id"),
}


@pytest.mark.parametrize("name", POISON)
def test_poison_is_refused_alone_in_a_batch(name: str) -> None:
    element, code = POISON[name]
    frame = b"[" + b'{"id": "good-1", "body": 2.5},' + element + b', {"id": 7, "body": -1}]'
    events, rejected = decode_frame(frame, numeric=True)
    assert [e.id for e in events] == ["good-1", "7"]
    assert [r.code for r in rejected] == [code]
    # Only the bad element goes to the dead-letter queue, and its payload is JSON again.
    assert json.loads(rejected[0].payload)["id"] == json.loads(element)["id"]


def test_integer_ids_beyond_64_bits_never_collapse_into_one() -> None:
    frame = b'[{"id": 18446744073709551616, "body": 1}, {"id": 18446744073709551617, "body": 1}]'
    events, rejected = decode_frame(frame, numeric=True)
    assert not events
    assert [r.code for r in rejected] == ["bad_id", "bad_id"]
    # Below -2**63 orjson reads 19 digits as a float too.
    events, rejected = decode_frame(b'{"id": -9223372036854775809, "body": 1}', numeric=True)
    assert not events
    assert [r.code for r in rejected] == ["bad_id"]
    # Within 64 bits, neighbours stay apart even when orjson is not the parser.
    frame = b'[{"id": 18446744073709551614, "body": 1}, {"id": 18446744073709551615, "body": 1}]'
    events, _ = decode_frame(frame, numeric=True)
    assert [e.id for e in events] == ["18446744073709551614", "18446744073709551615"]


def test_features_beyond_the_value_bound_are_refused() -> None:
    events, rejected = decode_frame(b'{"id": 1, "body": [1, -1e101, 3]}', numeric=False,
                                    n_features=3)
    assert not events
    assert rejected[0].code == "out_of_range"
    assert "body[1]" in rejected[0].reason
