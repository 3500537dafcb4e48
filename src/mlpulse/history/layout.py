"""Where history files sit, what they are called, and which of them count.

    rows:     <history>/date=YYYY-MM-DD/hour=HH/<name>.parquet
    rollups:  <history>/_rollups/date=YYYY-MM-DD/hour=HH/<name>.parquet
    drift:    <history>/_drift/date=YYYY-MM-DD/hour=HH/<name>.parquet

Partitions go by the UTC hour a row was joined. A flush writes `f-<pos>.parquet` into each
hour it touches, `<pos>` being the last metric-log position it covers. Compaction merges an
hour's files into `c-<pos>.parquet`, `<pos>` the newest file it took in. In a partition the
newest c-file counts, with every f-file newer than it; any other file is superseded (a
compaction cut short by a kill leaves its inputs behind) and is neither read nor kept. So
no row is ever counted twice, whatever moment a writer died at.

Names starting with `_` or `.` are ignored by Spark, Hive and Trino, so the rollups, the
checkpoint and the temporary files (`.<name>.part`) never look like rows to them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa

# The metric log's columns, in order; the history's rows have the same names.
LOG_COLUMNS = ("id", "y_true", "y_pred", "absolute_error", "model_version",
               "sent_at", "joined_at", "logged_at", "pos")

ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("y_true", pa.float64()), ("y_pred", pa.float64()),
    ("absolute_error", pa.float64()), ("model_version", pa.string()),
    ("sent_at", pa.float64()), ("joined_at", pa.float64()), ("logged_at", pa.float64()),
    ("pos", pa.string()),
])

# Per minute, version and histogram bin: how many errors, their sum, sum of squares and
# extremes. Totals per minute are sums over the bins; a quantile lies in a known bin.
ROLLUP_SCHEMA = pa.schema([
    ("minute", pa.int64()), ("model_version", pa.string()), ("bin", pa.int32()),
    ("count", pa.int64()), ("sum", pa.float64()), ("sumsq", pa.float64()),
    ("min", pa.float64()), ("max", pa.float64()),
])

ROLLUPS = "_rollups"
DRIFT = "_drift"
CHECKPOINT = "_checkpoint.json"

# A metric-log position: the outbox entry (milliseconds, sequence) and the row's index.
Pos = tuple[int, int, int]
_POS = re.compile(r"^(\d+)-(\d+):(\d+)$")
_NAME = re.compile(r"^([fc])-(\d+)-(\d+)-(\d+)\.parquet$")
_DATE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_HOUR = re.compile(r"^hour=(\d{2})$")


def parse_pos(text: str) -> Pos | None:
    """`<ms>-<seq>:<index>` as a comparable tuple, or None if it is not one."""
    m = _POS.match(text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def pos_text(pos: Pos) -> str:
    return f"{pos[0]}-{pos[1]}:{pos[2]}"


def file_name(kind: str, pos: Pos) -> str:
    return f"{kind}-{pos[0]}-{pos[1]}-{pos[2]}.parquet"


def partition_name(hour: int) -> str:
    """The Hive path of an hour (hours since the epoch, UTC)."""
    t = datetime.fromtimestamp(hour * 3600, UTC)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


@dataclass(frozen=True)
class Partition:
    path: Path
    hour: int

    @property
    def end(self) -> float:
        """The first second after this hour."""
        return (self.hour + 1) * 3600.0


def partitions(base: Path, since: float | None = None,
               until: float | None = None) -> list[Partition]:
    """The hour partitions under `base` that may hold times in [since, until), oldest first."""
    found: list[Partition] = []
    with contextlib.suppress(FileNotFoundError):
        for day in os.scandir(base):
            date = _DATE.match(day.name)
            if date is None or not day.is_dir():
                continue
            midnight = datetime.strptime(date.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
            first = int(midnight.timestamp()) // 3600
            if (since is not None and (first + 24) * 3600 <= since) or (
                    until is not None and first * 3600 >= until):
                continue
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(day.path):
                    hh = _HOUR.match(entry.name)
                    if hh is None or not entry.is_dir():
                        continue
                    p = Partition(Path(entry.path), first + int(hh.group(1)))
                    if (since is None or p.end > since) and (until is None
                                                             or p.hour * 3600 < until):
                        found.append(p)
    return sorted(found, key=lambda p: p.hour)


def sort_key(path: Path) -> Pos:
    m = _NAME.match(path.name)
    assert m is not None
    return int(m.group(2)), int(m.group(3)), int(m.group(4))


def files(partition: Path) -> tuple[list[Path], list[Path]]:
    """(the files that count, oldest first; the superseded ones) of one partition."""
    compacted: list[Path] = []
    flushed: list[Path] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(partition):
            m = _NAME.match(entry.name)
            if m is not None:
                (compacted if m.group(1) == "c" else flushed).append(Path(entry.path))
    compacted.sort(key=sort_key)
    flushed.sort(key=sort_key)
    if not compacted:
        return flushed, []
    newest = sort_key(compacted[-1])
    live = [compacted[-1]] + [f for f in flushed if sort_key(f) > newest]
    stale = compacted[:-1] + [f for f in flushed if sort_key(f) <= newest]
    return live, stale


def covered(partition: Path, pos: Pos) -> bool:
    """Whether the partition already holds a flush's file for `pos`, as it is or compacted."""
    live, _ = files(partition)
    return any(sort_key(f) >= pos for f in live)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file under a temporary name, fsync it, and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint document, or {} before the first was written."""
    try:
        doc: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    return doc


def write_checkpoint(path: Path, doc: dict[str, Any]) -> None:
    write_atomic(path, lambda fh: fh.write(orjson.dumps(doc)))


def temporaries(base: Path) -> Iterator[Path]:
    """Temporary files a killed writer left anywhere under `base`."""
    for root, _dirs, names in os.walk(base):
        for name in names:
            if name.startswith(".") and name.endswith(".part"):
                yield Path(root) / name
