"""GET /api/history through the real app: any signed-in user reads it, in the issue's shape,
agreeing with the rows it was built from."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest

from mlpulse.gateway.deps import Gateway
from mlpulse.history.writer import HistoryWriter
from tests.gateway.test_app_inprocess import bearer, client, gateway  # noqa: F401
from tests.history.conftest import opened  # noqa: F401
from tests.history.logs import body, write_log


@pytest.fixture
def rows(gateway: Gateway, opened: Callable[[Path], IO[bytes]]  # noqa: F811
         ) -> list[tuple[str, str, float, float]]:
    log = gateway.settings.metric_log
    log.parent.mkdir(parents=True, exist_ok=True)
    written = write_log(log, entries=120, per_entry=20, span=3 * 3600)
    f = opened(log)
    writer = HistoryWriter(gateway.settings.history_path)
    writer.flush(body(f, writer.recover(f)))
    return written


async def test_history_answers_any_signed_in_user_with_exact_points(
        client: httpx.AsyncClient, rows: list[tuple[str, str, float, float]]  # noqa: F811
) -> None:
    now = time.time()
    since, until = now - 3600, now
    reply = await client.get("/api/history", params={"since": since, "until": until,
                                                     "step": 300, "model_version": "v1"},
                             headers=bearer("bob"))
    assert reply.status_code == 200, reply.text
    got = reply.json()
    assert got["source"] == "rows"
    assert got["quantiles"] == "exact"
    assert got["versions"] == ["v1"]
    # How far the history reaches: the time of the last outbox entry in it (the test's
    # entries are numbered from 1,700,000,000,000 ms, 120 of them).
    assert got["written_until"] == pytest.approx(1_700_000_000.119)
    assert "unavailable" in got["drift"]  # this app has no drift view, and says so
    chosen = [r for r in rows if since <= r[2] < until and r[1] == "v1"]
    assert sum(p["count"] for p in got["series"]) == len(chosen) > 0
    assert set(got["series"][0]) == {"t", "count", "mae", "rmse", "p95", "max"}
    for p in got["series"]:
        errs = [r[3] for r in chosen if p["t"] <= r[2] < p["t"] + 300]
        assert p["count"] == len(errs)
        assert math.isclose(p["mae"], sum(errs) / len(errs))
        assert p["max"] == max(errs)


async def test_long_ranges_come_from_rollups_and_bad_ranges_get_422(
        client: httpx.AsyncClient, rows: list[tuple[str, str, float, float]]  # noqa: F811
) -> None:
    now = time.time()
    headers = bearer("alice")
    week = await client.get("/api/history", params={"since": now - 7 * 86400, "until": now},
                            headers=headers)
    assert week.status_code == 200
    assert week.json()["source"] == "rollups"
    assert week.json()["quantiles"] == "bin"
    assert week.json()["drift"] is None  # drift is per version
    assert sum(p["count"] for p in week.json()["series"]) == len(rows)
    default = await client.get("/api/history", headers=headers)
    assert default.status_code == 200
    assert default.json()["until"] - default.json()["since"] == pytest.approx(3600)
    both = await client.get("/api/history", params={"since": now - 3600, "until": now,
                                                    "per_version": "true"}, headers=headers)
    assert both.status_code == 200
    answer = both.json()
    assert answer["versions"] == ["v1", "v2"]
    assert set(answer["by_version"]) == {"v1", "v2"}
    assert sum(p["count"] for v in answer["by_version"].values() for p in v) == sum(
        p["count"] for p in answer["series"]) > 0
    for params in ({"since": now, "until": now - 1}, {"step": 0}, {"step": "x"},
                   {"since": "nan"}, {"until": "inf"}, {"step": "nan"},
                   {"since": now - 3 * 86400, "until": now, "source": "rows"}):
        reply = await client.get("/api/history", params=params, headers=headers)
        assert reply.status_code == 422, (params, reply.text)
    assert (await client.get("/api/history")).status_code == 401
