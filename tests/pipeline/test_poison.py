"""Poison on all three queues, mixed with good events, against real model and metric roles.

Hypothesis builds batch frames and single messages that mix good events with bad ones
of every class an adversarial review found (and more). Every bad element must land in
`mlpulse.dead` alone, with a reason and the code of its class; every good event must be
joined exactly once; no role may die; and the aggregates must equal the log.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pika
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_diabetes

from tests.conftest import Env, Role, wait_until

X, Y = (a.tolist() for a in load_diabetes(return_X_y=True))
IDS = itertools.count()
QUEUES = ("features", "y_true", "y_pred")


@dataclass(frozen=True)
class Poison:
    """One bad element (or a whole bad message), the queue it goes to, and its code."""

    kind: str
    queue: str
    raw: bytes
    code: str
    whole: bool = False


@dataclass(frozen=True)
class Good:
    """One event sent as features and as y_true under an id of `kind`."""

    kind: str
    text: str
    row: int


def body_for(queue: str) -> bytes:
    return json.dumps(X[0]).encode() if queue == "features" else b"1.5"


def with_id(queue: str, raw_id: bytes, extra: bytes = b"") -> bytes:
    return b'{"id": ' + raw_id + b', "body": ' + body_for(queue) + extra + b"}"


def with_body(raw_body: bytes) -> bytes:
    return b'{"id": "bad-body", "body": ' + raw_body + b"}"


def with_extra(queue: str, extra: bytes) -> bytes:
    return with_id(queue, b'"bad-extra"', b", " + extra)


# Element poison that any queue refuses, as (kind, code, bytes for a queue).
def id_poison() -> st.SearchStrategy[tuple[str, str, Callable[[str], bytes]]]:
    control = st.characters(min_codepoint=0, max_codepoint=0x9F).filter(
        lambda c: c < " " or "\x7f" <= c)
    big = st.integers(2**64, 2**80) | st.integers(-(2**80), -(2**63) - 1)
    return st.one_of(
        st.builds(lambda c: ("control character in an id", "bad_id",
                             lambda q: with_id(q, json.dumps(f"a{c}b").encode())), control),
        st.builds(lambda n: ("lone surrogate in an id", "bad_id",
                             lambda q: with_id(q, f'"x\\u{n:04x}"'.encode())),
                  st.integers(0xD800, 0xDFFF)),
        st.builds(lambda n: ("integer id beyond 64 bits", "bad_id",
                             lambda q: with_id(q, str(n).encode())), big),
        st.sampled_from([
            ("empty id", "bad_id", lambda q: with_id(q, b'""')),
            ("boolean id", "bad_id", lambda q: with_id(q, b"true")),
            ("null id", "bad_id", lambda q: with_id(q, b"null")),
            ("object id", "bad_id", lambda q: with_id(q, b'{"a": 1}')),
            ("id over 1024 characters", "bad_id",
             lambda q: with_id(q, json.dumps("i" * 1025).encode())),
            ("no id", "no_id", lambda q: b'{"body": ' + body_for(q) + b"}"),
            ("no body", "no_body", lambda q: b'{"id": "nobody"}'),
            ("element not an object", "bad_shape", lambda q: b'"not an object"'),
        ]),
    )


def extra_poison() -> st.SearchStrategy[tuple[str, str, Callable[[str], bytes]]]:
    return st.one_of(
        st.builds(lambda d: ("extra nested deeper than 254", "bad_extra",
                             lambda q: with_extra(q, b'"x": ' + b"[" * d + b"]" * d)),
                  st.integers(256, 900)),
        st.builds(lambda d: ("ts too large for a float", "bad_extra",
                             lambda q: with_extra(q, b'"ts": 1' + b"0" * d)),
                  st.integers(310, 500)),
        st.builds(lambda c: ("control character in model_version", "bad_extra",
                             lambda q: with_extra(q, b'"model_version": '
                                                  + json.dumps(f"v1{c}").encode())),
                  st.sampled_from(["\n", "\r", "\x00", "\x1b"])),
        st.sampled_from([
            ("ts of 1e400", "bad_extra", lambda q: with_extra(q, b'"ts": 1e400')),
            ("lone surrogate in an extra", "bad_extra",
             lambda q: with_extra(q, b'"note": "\\udc00"')),
            ("model_version not text", "bad_extra",
             lambda q: with_extra(q, b'"model_version": ["v1"]')),
        ]),
    )


def number_poison() -> st.SearchStrategy[tuple[str, str, bytes]]:
    """Bad y_true / y_pred bodies."""
    huge = st.floats(1.01e100, 1e300) | st.floats(-1e300, -1.01e100)
    return st.one_of(
        st.builds(lambda v: ("value beyond 1e100", "out_of_range", with_body(repr(v).encode())),
                  huge),
        st.sampled_from([
            ("label whose square overflows", "out_of_range", with_body(b"1.4e154")),
            ("NaN body", "not_finite", with_body(b"NaN")),
            ("infinite body", "not_finite", with_body(b"-Infinity")),
            ("body too large for a float", "not_finite", with_body(b"1e999")),
            ("text body", "not_numeric", with_body(b'"1.5"')),
            ("boolean body", "not_numeric", with_body(b"true")),
            ("list body", "not_numeric", with_body(b"[1.5]")),
        ]),
    )


def feature_poison() -> st.SearchStrategy[tuple[str, str, bytes]]:
    """Bad feature vectors."""
    return st.one_of(
        st.builds(lambda n: ("wrong number of features", "wrong_length",
                             with_body(json.dumps([0.1] * n).encode())),
                  st.integers(0, 30).filter(lambda n: n != 10)),
        st.builds(lambda i: ("feature beyond 1e100", "out_of_range",
                             with_body(json.dumps([*([0.1] * i), -1e150, *([0.1] * (9 - i))])
                                       .encode())), st.integers(0, 9)),
        st.sampled_from([
            ("NaN feature", "not_finite", with_body(b"[NaN" + b", 0.1" * 9 + b"]")),
            ("text feature", "not_numeric", with_body(b'["x"' + b", 0.1" * 9 + b"]")),
            ("features not a list", "not_numeric", with_body(b"1.5")),
        ]),
    )


WHOLE = st.sampled_from([
    ("not JSON", "not_json", b"this is not json"),
    ("truncated JSON", "not_json", b'[{"id": "t", "body": 1'),
    ("not UTF-8", "not_json", b'{"id": "\xff\xfe", "body": 1}'),
    ("empty message", "not_json", b""),
])


@st.composite
def poisons(draw: st.DrawFn) -> Poison:
    queue = draw(st.sampled_from(QUEUES))
    which = draw(st.sampled_from(["id", "extra", "body", "whole"]))
    if which == "whole":
        kind, code, raw = draw(WHOLE)
        return Poison(kind, queue, raw, code, whole=True)
    if which == "body":
        kind, code, raw = draw(feature_poison() if queue == "features" else number_poison())
        return Poison(kind, queue, raw, code)
    kind, code, make = draw(id_poison() if which == "id" else extra_poison())
    return Poison(kind, queue, make(queue), code)


def goods() -> st.SearchStrategy[list[Good]]:
    text = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=12)
    kinds = st.sampled_from(["text", "int", "float"])
    one = st.builds(Good, kinds, text, st.integers(0, len(X) - 1))
    return st.lists(one, max_size=6)


def concrete(good: Good) -> object:
    """A fresh id of the drawn kind, never used before in this run."""
    n = next(IDS)
    if good.kind == "int":
        return 10**15 + n
    if good.kind == "float":
        return 2 * 10**15 + n + 0.5
    return f"{n}-{good.text}"


def canonical(raw: object) -> str:
    return repr(raw) if isinstance(raw, float) else str(raw)


def frames(elements: list[bytes], batched: bool) -> list[bytes]:
    if not batched:
        return elements
    return [b"[" + b", ".join(elements) + b"]"] if elements else []


def publish(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str,
            bodies: list[bytes]) -> None:
    for body in bodies:
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))


def drain_dead(ch: pika.adapters.blocking_connection.BlockingChannel) -> list[dict[str, str]]:
    letters = []
    while True:
        method, props, _ = ch.basic_get("mlpulse.dead", auto_ack=True)
        if method is None:
            return letters
        headers = props.headers or {}
        letters.append({k: str(headers.get(f"x-mlpulse-{k}", "")) for k in
                        ("code", "reason", "queue")})


def one_of_each() -> list[list[Poison]]:
    """An explicit example for each class the review named, on every queue it fits."""
    cases = [
        ("newline in model_version", "bad_extra", b'"model_version": "v1\\nx"'),
        ("lone surrogate in an extra", "bad_extra", b'"note": "\\ud800"'),
        ("extra nested deeper than 254", "bad_extra", b'"x": ' + b"[" * 300 + b"]" * 300),
        ("ts too large for a float", "bad_extra", b'"ts": 1' + b"0" * 400),
    ]
    out = [[Poison(kind, q, with_extra(q, extra), code) for q in QUEUES]
           for kind, code, extra in cases]
    out.append([Poison("CR in an id", q, with_id(q, b'"a\\rb"'), "bad_id") for q in QUEUES])
    out.append([Poison("LF in an id", q, with_id(q, b'"a\\nb"'), "bad_id") for q in QUEUES])
    out.append([Poison("lone surrogate in an id", q, with_id(q, b'"\\ud800"'), "bad_id")
                for q in QUEUES])
    out.append([Poison("integer id beyond 64 bits", q, with_id(q, b"18446744073709551617"),
                       "bad_id") for q in QUEUES])
    out.append([Poison("label whose square overflows", q, with_body(b"1.4e154"), "out_of_range")
                for q in ("y_true", "y_pred")])
    return out


@pytest.fixture
def roles(env: Env, spawn: Callable[..., Role]) -> tuple[Role, Role]:
    return spawn("model"), spawn("metric")


def _example(env: Env, ch: pika.adapters.blocking_connection.BlockingChannel,
             good: list[Good], poison: list[Poison], batched: bool) -> None:
    sent: dict[str, float] = {}
    elements: dict[str, list[bytes]] = {q: [] for q in QUEUES}
    for g in good:
        raw_id = concrete(g)
        sent[canonical(raw_id)] = Y[g.row]
        elements["features"].append(json.dumps({"id": raw_id, "body": X[g.row]}).encode())
        elements["y_true"].append(json.dumps({"id": raw_id, "body": Y[g.row]}).encode())
    wholes = [p for p in poison if p.whole]
    for p in poison:
        if not p.whole:
            elements[p.queue].append(p.raw)
    before = env.row_count()
    for queue in QUEUES:
        publish(ch, queue, frames(elements[queue], batched))
        publish(ch, queue, [p.raw for p in wholes if p.queue == queue])
    letters: list[dict[str, str]] = []

    def settled() -> bool:
        letters.extend(drain_dead(ch))
        return len(letters) >= len(poison) and env.row_count() >= before + len(good)

    wait_until(settled, timeout=20, what=f"{len(poison)} dead letters and {len(good)} rows")
    assert Counter(d["code"] for d in letters) == Counter(p.code for p in poison), letters
    assert all(d["reason"] and d["code"] != "internal" for d in letters), letters
    assert Counter(d["queue"] for d in letters) == Counter(p.queue for p in poison)
    rows = env.rows()[before:]
    assert sorted(r["id"] for r in rows) == sorted(sent), "a good event was lost or doubled"
    for r in rows:
        assert float(r["y_true"]) == sent[r["id"]]
        assert float(r["absolute_error"]) == abs(float(r["y_true"]) - float(r["y_pred"]))


@pytest.mark.timeout(900)
def test_poison_never_stops_the_pipeline(env: Env, roles: tuple[Role, Role]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    examples = 0

    # No shrinking: each failing try waits out a timeout on real processes, and the
    # failing example as drawn already names the poison that did it.
    @settings(max_examples=200, deadline=None, database=None,
              phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(good=goods(), poison=st.lists(poisons(), min_size=1, max_size=4),
           batched=st.booleans())
    def run(good: list[Good], poison: list[Poison], batched: bool) -> None:
        nonlocal examples
        examples += 1
        _example(env, ch, good, poison, batched)
        for role in roles:
            assert role.proc.poll() is None, f"{role.args[0]} died:\n{role.output()}"

    for case in one_of_each():
        run = example(good=[Good("text", "mixed, \"quoted\"", 1)], poison=case,
                      batched=True)(run)
    run()
    conn.close()
    assert examples >= 200

    # The aggregates equal the log: nothing counted that was not written, or the reverse.
    rows = env.rows()
    client = env.redis()
    agg = {k.decode(): v.decode() for k, v in client.hgetall("mlpulse:agg").items()}
    hist = sum(int(v) for v in client.hgetall("mlpulse:hist").values())
    by_version = {k.decode(): float(v) for k, v in client.hgetall("mlpulse:by_version").items()}
    client.close()
    assert int(agg["count"]) == len(rows) == hist
    assert int(agg.get("duplicates", 0)) == int(agg.get("conflicts", 0)) == 0
    assert math.isclose(float(agg["sum_abs"]), sum(float(r["absolute_error"]) for r in rows),
                        rel_tol=1e-9)
    assert by_version["v1|count"] == len(rows)
    assert len({r["id"] for r in rows}) == len(rows)
