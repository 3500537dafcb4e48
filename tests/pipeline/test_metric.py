"""The metric role's outputs besides the log: aggregates and bounded memory."""

from __future__ import annotations

import math
from collections.abc import Callable

from tests.conftest import Env, Role, produce, wait_until


def test_aggregates_agree_with_the_log_and_memory_is_bounded(
        env: Env, spawn: Callable[..., Role]) -> None:
    spawn("model")
    spawn("metric", extra={"MLPULSE_DONE_TTL": "600"})
    produce(env, "--count", "1000", "--batch", "100", "--rate", "0")
    wait_until(lambda: env.row_count() >= 1000, what="1000 rows")
    errors = [float(r["absolute_error"]) for r in env.rows()]
    r = env.redis()
    agg = {k.decode(): float(v) for k, v in r.hgetall("mlpulse:agg").items()}
    assert agg["count"] == len(errors)
    assert math.isclose(agg["sum_abs"] / agg["count"], sum(errors) / len(errors), rel_tol=1e-9)
    assert math.isclose(math.sqrt(agg["sum_sq"] / agg["count"]),
                        math.sqrt(sum(e * e for e in errors) / len(errors)), rel_tol=1e-9)
    assert math.isclose(agg["max_abs"], max(errors), rel_tol=1e-12)
    width = float(r.hget("mlpulse:hist:meta", "width"))
    bins = {int(k): int(v) for k, v in r.hgetall("mlpulse:hist").items()}
    assert sum(bins.values()) == len(errors)
    assert bins.get(0, 0) == sum(1 for e in errors if e < width)
    per_second = sum(int(r.hget(k, "count")) for k in r.scan_iter("mlpulse:sec:*"))
    assert per_second == len(errors)
    by_version = r.hgetall("mlpulse:by_version")
    assert int(by_version[b"v1|count"]) == len(errors)
    # Nothing waits any more, and every done-marker expires.
    assert r.hlen("mlpulse:pending:t") == 0
    assert r.hlen("mlpulse:pending:p") == 0
    # (Markers live in generations as long as the done TTL, 600 s here: a hash expires
    # at the end of the generation after its own.)
    ttls = [r.ttl(k) for k in list(r.scan_iter("mlpulse:done:*", count=1000))[:50]]
    assert ttls
    assert all(0 < t <= 1200 for t in ttls)
    # The outbox is trimmed once rows are on disk: at most the last entry stays.
    assert r.xlen("mlpulse:joined") <= 1
    r.close()
