"""The sink's archive in-process: a history write that fails part-way (a full disk) is
tried again over the same rows, so nothing is lost or doubled, and rotation waits for it."""

from __future__ import annotations

import errno
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mlpulse.history import query, writer
from mlpulse.pipeline import logfiles
from mlpulse.pipeline.archive import Archive, LogPolicy
from mlpulse.pipeline.sink import HEADER_LINE
from tests.history.logs import write_log


def ids(root: Path) -> Counter[str]:
    return Counter(query.read_rows(root, 0, 4e9, ["id"]).table.column("id").to_pylist())


async def test_a_flush_failing_part_way_is_redone_over_the_same_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = tmp_path / "metric_log.csv"
    rows = write_log(live, entries=20, per_entry=30, span=2 * 3600)
    root = tmp_path / "history"
    archive = Archive(live, LogPolicy(history=root, flush_seconds=0, rotate_bytes=1),
                      HEADER_LINE)
    real = writer.write_parquet
    calls = {"n": 0}

    def full_disk_once(path: Path, table: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first file of the flush is in place, then the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, table)

    monkeypatch.setattr(writer, "write_parquet", full_disk_once)
    with live.open("rb") as f:
        await archive.open(f, None)
        archive.wrote(f.seek(0, 2), 0.0)
        # The log is over its rotation size, but the history cannot take the rows yet.
        assert not await archive.rotate()
        assert archive.unflushed < archive.end
        assert not logfiles.rotated_files(live)
        # More rows arrive meanwhile; the retry still covers the failed flush first.
        more = write_log(live, entries=5, per_entry=30, span=600,
                         first_entry=1_800_000_000_000)
        archive.wrote(f.seek(0, 2), 0.0)
        archive._last_flush = 0.0  # the retry interval has passed
        assert await archive.rotate()
    assert ids(root) == Counter(r[0] for r in rows + more)
    assert next(p.name for p, _ in logfiles.rotated_files(live)).endswith(".csv")
    assert live.read_bytes() == HEADER_LINE


@pytest.mark.parametrize(
    ("first_row_at", "size", "policy", "due"),
    [
        (None, 10**9, LogPolicy(rotate_bytes=1), False),        # no rows yet: never
        (1_795_000_000.0, 2048, LogPolicy(rotate_bytes=1024), True),    # over the size
        (1_795_000_000.0, 512, LogPolicy(rotate_bytes=1024), False),
        (1_795_000_000.0, 10**12, LogPolicy(rotate_bytes=0, rotate_interval=0), False),  # off
        # Daily: the first row is from an earlier UTC day than now.
        (1_794_959_999.0, 10, LogPolicy(rotate_interval=86400), True),
        (1_794_960_000.0, 10, LogPolicy(rotate_interval=86400), False),
    ])
def test_rotation_is_due_by_size_and_by_period(
        tmp_path: Path, first_row_at: float | None, size: int, policy: LogPolicy,
        due: bool) -> None:
    now = 1_795_000_000.0  # 2026-11-18T11:06:40Z; that UTC day began at 1,794,960,000
    archive = Archive(tmp_path / "metric_log.csv", policy, HEADER_LINE)
    archive.end = size
    archive.first_row_at = first_row_at
    assert archive.rotation_due(now) is due
