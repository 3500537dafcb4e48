"""The DuckDB query docs/history.md gives, run as written against a history the sink wrote."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import duckdb

from mlpulse.history.writer import HistoryWriter
from tests.history.logs import body, write_log

DOC = Path(__file__).resolve().parents[2] / "docs" / "history.md"


def documented_query() -> str:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/history.md should hold one SQL example"
    return blocks[0]


def test_the_documented_duckdb_query_reads_the_history_as_it_is(
        tmp_path: Path, opened: Callable[[Path], IO[bytes]]) -> None:
    log = tmp_path / "metric_log.csv"
    rows = write_log(log, entries=60, per_entry=25, span=3 * 3600)
    f = opened(log)
    writer = HistoryWriter(tmp_path / "history")
    data = body(f, writer.recover(f))
    half = data.rfind(b"\n", 0, len(data) // 2) + 1
    writer.flush(data[:half])
    writer.flush(data[half:])
    writer.compact(closed_before=4e9)

    first_day = datetime.fromtimestamp(min(r[2] for r in rows), UTC).strftime("%Y-%m-%d")
    sql = documented_query().replace("logs/history", str(tmp_path / "history")).replace(
        "2026-11-01", first_day)
    # Hours as Unix seconds, so the rows come back without a time-zone library.
    got = duckdb.sql("SELECT model_version, epoch(hour), events, mae, p95 FROM ("
                     + sql.strip().rstrip(";") + ")").fetchall()

    want: dict[tuple[str, int], list[float]] = {}
    for _, version, joined, err in rows:
        want.setdefault((version, int(joined // 3600) * 3600), []).append(err)
    assert len(got) == len(want)
    for version, hour, events, mae, _p95 in got:
        errors = want[(version, int(hour))]
        assert events == len(errors)
        assert math.isclose(mae, sum(errors) / len(errors), rel_tol=1e-12)
