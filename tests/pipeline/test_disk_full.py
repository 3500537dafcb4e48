"""A full disk under the CSV sink: it waits, says why, writes nothing twice, and goes on."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio

from mlpulse import health
from mlpulse.keys import JOINED
from mlpulse.pipeline.sink import PROBLEM, CsvSink
from tests.conftest import Env
from tests.nodes import fill, small_disk


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB disk of the test's own."""
    with small_disk(tmp_path / "disk", "64k") as mount:
        yield mount


async def until(predicate: Callable[[], object], what: str, seconds: float = 20.0) -> None:
    """Poll a condition no event announces (a file growing, a problem reported)."""
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def ids_in(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [r["id"] for r in csv.DictReader(f)]


async def test_sink_waits_out_a_full_disk_and_writes_every_row_once(
        env: Env, disk: Path) -> None:
    client = redis.asyncio.Redis.from_url(env.redis_url)
    log_path = disk / "metric_log.csv"
    sink = CsvSink(log_path, client)
    finish = asyncio.Event()
    health.clear_problem(PROBLEM)

    async def add(first: int, n: int) -> None:
        rows = [[f"id-{i}", "1.5", "2.0", "v1", "", ""] for i in range(first, first + n)]
        await client.xadd(JOINED, {"at": "12.5", "rows": orjson.dumps(rows)})

    task = asyncio.create_task(sink.run(finish))
    try:
        await add(0, 10)
        await until(lambda: log_path.exists() and len(ids_in(log_path)) == 10, "10 rows")
        filler = fill(disk)
        for k in range(10, 400, 30):
            await add(k, 30)
        await until(health.problems, "the full disk reported")
        assert any("No space left" in p for p in health.problems()), health.problems()
        # The last page of the file may still take whole rows; a torn one never stays.
        written = ids_in(log_path)
        assert log_path.read_bytes().endswith(b"\n"), "a partial write stayed in the file"
        assert written == [f"id-{i}" for i in range(len(written))]
        assert len(written) < 400
        assert not task.done(), "the sink must wait, not die"
        filler.unlink()
        await until(lambda: len(ids_in(log_path)) == 400, "all 400 rows once space returned")
        await until(lambda: not health.problems(), "the problem cleared")
        finish.set()
        await asyncio.wait_for(task, 10)
        assert ids_in(log_path) == [f"id-{i}" for i in range(400)]
    finally:
        finish.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
