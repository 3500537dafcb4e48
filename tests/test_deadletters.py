"""Bad input reaches `mlpulse.dead` with its reason; good events around it still arrive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pika

from tests.conftest import Env, Role, wait_until

BAD_FEATURES = [
    (b"this is not json", "not_json"),
    (b'{"body": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}', "no_id"),
    (b'{"id": "nonnum", "body": ["a", 0, 0, 0, 0, 0, 0, 0, 0, 0]}', "not_numeric"),
    (b'{"id": "nan", "body": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]}', "not_finite"),
    (b'{"id": "short", "body": [0, 0, 0]}', "wrong_length"),
    (b'{"id": "huge", "body": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "pad": "' + b"x" * 5000 + b'"}',
     "too_large"),
]
BAD_LABELS = [
    (b'{"id": "inf", "body": Infinity}', "not_finite"),
    (b'{"id": "str", "body": "12"}', "not_numeric"),
]


def features(i: int) -> dict[str, object]:
    return {"id": f"good-{i}", "body": [0.01 * i] * 10}


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlpulse", *args],
                          env={**os.environ, **env.vars}, capture_output=True, text=True,
                          timeout=60, check=False)


def dead_count(ch: pika.adapters.blocking_connection.BlockingChannel) -> int:
    return int(ch.queue_declare("mlpulse.dead", durable=True).method.message_count)


def test_bad_input_is_dead_lettered_and_the_rest_flows(env: Env,
                                                       spawn: Callable[..., Role]) -> None:
    limits = {"MLPULSE_MAX_MESSAGE_BYTES": "4096"}
    spawn("model", extra=limits)
    spawn("metric", extra=limits)
    ch = env.channel()
    for q in ("features", "y_true"):
        ch.queue_declare(q, durable=True)
    good = 0
    for body, _ in BAD_FEATURES:
        ch.basic_publish("", "features", json.dumps(features(good)).encode())
        ch.basic_publish("", "y_true", json.dumps({"id": f"good-{good}", "body": 1}).encode())
        good += 1
        ch.basic_publish("", "features", body)
    for body, _ in BAD_LABELS:
        ch.basic_publish("", "y_true", body)
    # A batch frame with one bad element: only that element is set aside.
    frame = [features(100), {"id": "inframe", "body": [1, 2]}, features(101)]
    ch.basic_publish("", "features", json.dumps(frame).encode())
    ch.basic_publish("", "y_true", json.dumps([{"id": "good-100", "body": 2},
                                               {"id": "good-101", "body": 3}]).encode())
    expected_dead = len(BAD_FEATURES) + len(BAD_LABELS) + 1
    wait_until(lambda: env.row_count() >= good + 2 and dead_count(ch) >= expected_dead,
               what="good rows and dead letters")
    assert sorted(r["id"] for r in env.rows()) == sorted(
        [f"good-{i}" for i in range(good)] + ["good-100", "good-101"])
    assert dead_count(ch) == expected_dead

    listed = cli(env, "dead", "list", "--json", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    codes = sorted(d["code"] for d in letters)
    assert codes == sorted([c for _, c in BAD_FEATURES + BAD_LABELS] + ["wrong_length"])
    by_code = {d["code"]: d for d in letters}
    assert by_code["too_large"]["queue"] == "features"
    assert "limit is 4096" in by_code["too_large"]["reason"]
    assert by_code["not_finite"]["reason"]
    inframe = [d for d in letters if '"inframe"' in d["preview"]]
    assert len(inframe) == 1
    # Listing leaves the queue as it was.
    assert dead_count(ch) == expected_dead
    r = env.redis()
    assert int(r.hget("mlpulse:agg", "rejected")) == expected_dead
    assert int(r.hget("mlpulse:agg", "rejected:not_finite")) == 2
    r.close()
    ch.connection.close()


def test_a_fixed_dead_letter_can_be_replayed(env: Env, spawn: Callable[..., Role]) -> None:
    spawn("metric")
    ch = env.channel()
    ch.queue_declare("y_pred", durable=True)
    ch.basic_publish("", "y_pred", b'{"id": "r1", "body": "oops"}')
    ch.basic_publish("", "y_pred", b'{"id": "r2", "body": 4.0, "model_version": "v1"}')
    ch.basic_publish("", "y_true", b'{"id": "r2", "body": 5.0}')
    wait_until(lambda: dead_count(ch) == 1 and env.row_count() == 1, what="one dead, one row")
    letter = json.loads(cli(env, "dead", "list", "--json").stdout)
    assert letter["queue"] == "y_pred"
    assert cli(env, "dead", "replay").returncode != 0  # neither ids nor --all: a usage error
    replayed = cli(env, "dead", "replay", letter["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {letter['id']} to y_pred" in replayed.stdout
    # Replayed unchanged it fails again and comes back: nothing is lost in between.
    r = env.redis()
    wait_until(lambda: int(r.hget("mlpulse:agg", "rejected") or 0) == 2
               and dead_count(ch) == 1, what="the letter processed again and back")
    r.close()
    purged = cli(env, "dead", "purge", "--yes")
    assert purged.stdout.strip() == "1 dropped"
    assert dead_count(ch) == 0
    ch.connection.close()


def test_replayed_poison_comes_back_alone_with_its_own_reason(
        env: Env, spawn: Callable[..., Role]) -> None:
    metric = spawn("metric")
    ch = env.channel()
    ch.queue_declare("y_true", durable=True)
    poison = [b'{"id": "a\\nb", "body": 1}', b'{"id": "\\ud800", "body": 1}',
              b'{"id": "big", "body": 1.4e154}', b'{"id": 18446744073709551617, "body": 1}',
              b'{"id": "deep", "body": 1, "x": ' + b"[" * 300 + b"]" * 300 + b"}"]
    frame = b"[" + b", ".join([b'{"id": "ok-1", "body": 2}', *poison]) + b"]"
    ch.basic_publish("", "y_true", frame)
    ch.basic_publish("", "y_pred", b'{"id": "ok-1", "body": 3, "model_version": "v1"}')

    def codes() -> list[str]:
        listed = cli(env, "dead", "list", "--json", "--limit", "100")
        return sorted(json.loads(line)["code"] for line in listed.stdout.splitlines())

    expected = sorted(["bad_id", "bad_id", "out_of_range", "bad_id", "bad_extra"])
    wait_until(lambda: dead_count(ch) == len(poison) and env.row_count() == 1,
               what="each poison element dead-lettered alone, the good one joined")
    assert codes() == expected
    replayed = cli(env, "dead", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.count("replayed ") == len(poison), "each letter replayed once"
    r = env.redis()
    wait_until(lambda: int(r.hget("mlpulse:agg", "rejected") or 0) == 2 * len(poison)
               and dead_count(ch) == len(poison), what="the replayed letters back again")
    r.close()
    assert codes() == expected  # each for its own reason again, never "internal"
    assert [row["id"] for row in env.rows()] == ["ok-1"]
    assert metric.proc.poll() is None
    ch.connection.close()
