"""Writing the history: joined rows from the metric log into Parquet, exactly once.

The metric log is the durable record; the history is built from it. A flush takes the
log's bytes after the checkpoint (whole lines, already fsynced), parses them with
pyarrow, and writes one rows file and one rollup file into each hour they touch. The
checkpoint (`_checkpoint.json`, replaced atomically) names the last log position in the
history, and before the files of a flush are written it records the flush as pending:
its first position and its size in bytes. A writer killed mid-flush is finished by the
next start, which reads the same bytes from the log again and writes only the files
still missing, under the same names. The log is never rotated with rows not yet in the
history, so those bytes are always in the live file.

Compaction merges a closed hour's files into one (see `layout` for why that never counts a
row twice), and retention removes whole hours once they are older than the limit.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlpulse.history import rollup
from mlpulse.history.layout import (
    CHECKPOINT,
    DRIFT,
    LOG_COLUMNS,
    ROLLUPS,
    ROW_SCHEMA,
    Partition,
    Pos,
    covered,
    file_name,
    files,
    parse_pos,
    partition_name,
    partitions,
    pos_text,
    read_checkpoint,
    sort_key,
    temporaries,
    write_atomic,
    write_checkpoint,
)

log = logging.getLogger(__name__)

# The most log bytes one flush parses (about 600,000 rows): a long backlog goes in pieces.
MAX_FLUSH_BYTES = 64 << 20
_SCAN = 1 << 20
# Row groups of compacted files: large enough to read fast, small enough that a range
# read skips most of an hour it only touches (each holds a span of joined times).
ROW_GROUP = 1 << 18
COMPRESSION = "zstd"


class HistoryError(Exception):
    """The log and the history's checkpoint do not agree."""


def parse_rows(data: bytes) -> pa.Table:
    """Rows of the metric log (whole lines, no header) as a table of the history's schema."""
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=list(LOG_COLUMNS), use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=False),
        convert_options=pacsv.ConvertOptions(
            column_types=ROW_SCHEMA, strings_can_be_null=False,
            quoted_strings_can_be_null=False),
    )


def offset_after(log_file: IO[bytes], pos: Pos | None) -> int:
    """Where the first row after `pos` starts in an open metric log (rows are in position
    order, so it reads back from the end only as far as it must)."""
    end = log_file.seek(0, os.SEEK_END)
    log_file.seek(0)
    header_end = len(log_file.readline())
    if pos is None:
        return header_end
    cursor = end
    tail = b""  # read, not yet looked at; it may start inside a line
    while cursor > header_end:
        start = max(header_end, cursor - _SCAN)
        log_file.seek(start)
        tail = log_file.read(cursor - start) + tail
        cursor = start
        cut = tail.find(b"\n") + 1 if start > header_end else 0
        if start > header_end and cut == 0:
            continue  # all of it inside one long line
        body, tail = tail[cut:], tail[:cut]
        line_end = start + cut + len(body)
        for line in reversed(body[:-1].split(b"\n")) if body else ():
            if line:
                here = parse_pos(line.rsplit(b",", 1)[-1].decode("ascii", "replace"))
                if here is not None and here <= pos:
                    return line_end
            line_end -= len(line) + 1
    return header_end


def read_span(log_file: IO[bytes], start: int, size: int) -> bytes:
    return os.pread(log_file.fileno(), size, start)


def whole_lines(data: bytes) -> bytes:
    """`data` up to and with its last line break."""
    return data[: data.rfind(b"\n") + 1]


def read_file(path: Path) -> pa.Table:
    """One history file as it is (no columns from its directory names)."""
    with pq.ParquetFile(path) as pf:
        return pf.read()


def write_parquet(path: Path, table: pa.Table) -> None:
    write_atomic(path, lambda fh: pq.write_table(table, fh, compression=COMPRESSION))


class HistoryWriter:
    """The one writer of a history directory (the metric log's sink holds the lock)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rollups = root / ROLLUPS
        self.checkpoint: Pos | None = None
        # The size of a flush that failed part-way in this process: the next flush must
        # cover exactly the same log bytes, so its files get the same names.
        self.pending_bytes: int | None = None

    # --- the checkpoint -------------------------------------------------------------

    def _save(self, pos: Pos | None, pending: dict[str, Any] | None) -> None:
        write_checkpoint(self.root / CHECKPOINT,
                         {"pos": pos_text(pos) if pos else None, "pending": pending})

    # --- recovery and flushing ------------------------------------------------------

    def recover(self, log_file: IO[bytes]) -> int:
        """Finish what a killed writer left; returns where the log's unflushed rows start."""
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in temporaries(self.root):
            tmp.unlink(missing_ok=True)
        for base in (self.root, self.rollups, self.root / DRIFT):
            for doomed in base.glob("date=*/.hour=*.deleting"):
                shutil.rmtree(doomed, ignore_errors=True)
        doc = read_checkpoint(self.root / CHECKPOINT)
        self.checkpoint = parse_pos(doc["pos"]) if doc.get("pos") else None
        pending = doc.get("pending")
        if pending:
            self._redo(log_file, pending)
        return offset_after(log_file, self.checkpoint)

    def _redo(self, log_file: IO[bytes], pending: dict[str, Any]) -> None:
        target = parse_pos(pending["to"])
        start = offset_after(log_file, self.checkpoint)
        data = read_span(log_file, start, int(pending["bytes"]))
        table = parse_rows(data) if data else None
        last = parse_pos(table.column("pos")[-1].as_py()) if table is not None and len(
            table) else None
        if target is None or last != target:
            raise HistoryError(
                f"the history's pending flush ends at {pending['to']}, but the metric log "
                f"holds {pos_text(last) if last else 'nothing'} there; move "
                f"{self.root / CHECKPOINT} aside to rebuild the history from the live log")
        log.warning("finishing a history flush a stop cut short (through %s)", pending["to"])
        assert table is not None
        self._write_files(table, target, redo=True)
        self._save(target, None)
        self.checkpoint = target

    def flush(self, data: bytes) -> Pos:
        """Put rows of the log (whole lines after the checkpoint) into the history."""
        table = parse_rows(data)
        last = parse_pos(table.column("pos")[-1].as_py())
        if last is None or (self.checkpoint is not None and last <= self.checkpoint):
            raise HistoryError(f"rows out of order in the metric log: {last} after "
                               f"{self.checkpoint}")
        if self.pending_bytes is not None and self.pending_bytes != len(data):
            raise HistoryError(f"a failed flush of {self.pending_bytes} bytes must be "
                               f"tried again as it was, not with {len(data)}")
        self._save(self.checkpoint, {"to": pos_text(last), "bytes": len(data)})
        self.pending_bytes = len(data)
        self._write_files(table, last, redo=False)
        self._save(last, None)
        self.pending_bytes = None
        self.checkpoint = last
        return last

    def _write_files(self, table: pa.Table, last: Pos, redo: bool) -> None:
        hours = (table.column("joined_at").to_numpy(zero_copy_only=False) // 3600).astype(
            np.int64)
        name = file_name("f", last)
        for hour in np.unique(hours):
            part = table if hours[0] == hours[-1] == hour else table.filter(
                pa.array(hours == hour))
            where = partition_name(int(hour))
            for base, rows in ((self.root, part), (self.rollups, rollup.rollup(part))):
                folder = base / where
                if redo and covered(folder, last):
                    continue
                write_parquet(folder / name, rows)

    # --- compaction and retention ---------------------------------------------------

    def compact(self, closed_before: float, halt: threading.Event | None = None) -> int:
        """Merge each hour that ended before `closed_before` into one file; returns how
        many hours were merged. A set `halt` stops it between hours."""
        merged = 0
        for base, how in ((self.root, "rows"), (self.rollups, "rollups"),
                          (self.root / DRIFT, "concat")):
            for p in partitions(base, until=closed_before):
                if halt is not None and halt.is_set():
                    return merged
                if p.end > closed_before:
                    continue
                live, stale = files(p.path)
                if len(live) > 1:
                    try:
                        self._merge(p, live, how)
                    except (OSError, pa.ArrowException) as exc:
                        log.warning("history: cannot compact %s, left as it is: %s",
                                    p.path, exc)
                        continue
                    merged += 1
                    live, stale = files(p.path)
                for path in stale:
                    path.unlink(missing_ok=True)
        return merged

    def _merge(self, p: Partition, live: list[Path], how: str) -> None:
        target = p.path / file_name("c", sort_key(live[-1]))
        if how == "rollups":
            write_parquet(target, rollup.merge([read_file(f) for f in live]))
            return
        if how == "concat":
            write_parquet(target, pa.concat_tables([read_file(f) for f in live]))
            return

        def write(fh: IO[bytes]) -> None:
            with pq.ParquetWriter(fh, ROW_SCHEMA, compression=COMPRESSION) as out:
                batch: list[pa.Table] = []
                held = 0
                for f in live:
                    t = read_file(f).cast(ROW_SCHEMA)
                    batch.append(t)
                    held += len(t)
                    if held >= ROW_GROUP:
                        out.write_table(pa.concat_tables(batch), row_group_size=ROW_GROUP)
                        batch, held = [], 0
                if batch:
                    out.write_table(pa.concat_tables(batch), row_group_size=ROW_GROUP)

        write_atomic(target, write)

    def retain(self, now: float, rows_days: float, rollup_days: float) -> int:
        """Remove the hours older than each limit; returns how many went."""
        removed = 0
        for base, days in ((self.root, rows_days), (self.rollups, rollup_days),
                           (self.root / DRIFT, rollup_days)):
            cutoff = now - days * 86400
            for p in partitions(base, until=cutoff):
                if p.end > cutoff:
                    continue
                # Renamed first, so no reader sees an hour half gone.
                doomed = p.path.with_name(f".{p.path.name}.deleting")
                with contextlib.suppress(FileNotFoundError):
                    os.replace(p.path, doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
                    removed += 1
                with contextlib.suppress(OSError):
                    p.path.parent.rmdir()  # the day, once its last hour is gone
        return removed
