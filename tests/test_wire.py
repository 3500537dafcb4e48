"""Pure logic of the wire format: canonical ids, validation, batch frames."""

from __future__ import annotations

import json

import pytest

from mlpulse.wire import canonical_id, decode_frame


@pytest.mark.parametrize(("raw", "text"), [
    ("abc", "abc"), (1, "1"), (-7, "-7"), (1.0, "1.0"), (0.1, "0.1"),
    (1700000000.123456, "1700000000.123456"), (10**30, str(10**30)),
])
def test_canonical_id(raw: object, text: str) -> None:
    assert canonical_id(raw) == text


@pytest.mark.parametrize("raw", [True, None, [], {}, float("nan"), float("inf"), ""])
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
