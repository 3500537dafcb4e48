"""What the CSV sink keeps beyond the live log: rotation, the Parquet history, upkeep.

The sink writes rows to the live file; this follows behind it:
- every `flush_seconds` (or 64 MiB of log) the rows written since the last flush go into
  the history, read back from the live file, off the event loop;
- when the live file reaches `rotate_bytes`, or its first row is from an earlier period
  of `rotate_interval` (UTC days by default), the history takes the rest of its rows and
  the file is rotated. A rotation waits while the history cannot be written, so a rotated
  file never holds a row the history lacks, and a crash mid-flush always finds its rows in
  the live file;
- once a minute, and right after a rotation: the last complete minutes of drift counts
  are copied from Redis into the history, rotated files are compressed and expired,
  closed hours of the history compacted, and old hours removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa

from mlpulse import health, telemetry
from mlpulse.config import Settings
from mlpulse.errors import TRANSIENT_ERRORS
from mlpulse.history.drift_rollups import DriftArchive
from mlpulse.history.writer import MAX_FLUSH_BYTES, HistoryError, HistoryWriter, whole_lines
from mlpulse.pipeline import logfiles
from mlpulse.store import Redis
from mlpulse.waiting import first_of

log = logging.getLogger(__name__)

PROBLEM = "history"
# An hour is compacted once it ended this long before the last flush could still add to it.
COMPACT_GRACE = 60.0


@dataclass(frozen=True)
class LogPolicy:
    rotate_bytes: int = 1 << 30
    rotate_interval: float = 86400.0
    compress: bool = True
    keep_days: float = 7.0
    history: Path | None = None
    flush_seconds: float = 30.0
    history_days: float = 35.0
    rollup_days: float = 400.0
    upkeep_seconds: float = 60.0
    # Drift counts are copied into the history from Redis, which holds this many seconds.
    drift_keep: int | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> LogPolicy:
        return cls(rotate_bytes=s.log_rotate_bytes, rotate_interval=s.log_rotate_interval,
                   compress=s.log_compress, keep_days=s.log_retention_days,
                   history=s.history_path if s.history_enabled else None,
                   flush_seconds=s.history_flush_seconds,
                   history_days=s.history_retention_days,
                   rollup_days=s.rollup_retention_days,
                   drift_keep=s.drift_keep if s.drift_enabled else None)


def tail_pos(f: IO[bytes]) -> str | None:
    """The position of the last row of an open log, or None if it has no rows."""
    end = f.seek(0, os.SEEK_END)
    start = max(0, end - (64 << 10))
    line = os.pread(f.fileno(), end - start, start).rstrip(b"\n").rsplit(b"\n", 1)[-1]
    field = line.rsplit(b",", 1)[-1].decode("ascii", "replace")
    return field if field[:1].isdigit() else None


class Archive:
    """Rotation, history and upkeep of one live log (only the sink holding the lock)."""

    def __init__(self, live: Path, policy: LogPolicy, header: bytes,
                 redis: Redis | None = None) -> None:
        self.live = live
        self.redis = redis
        self.policy = policy
        self.header = header
        self.history = HistoryWriter(policy.history) if policy.history else None
        self.drift = DriftArchive(policy.history) if policy.history and redis is not None \
            and policy.drift_keep else None
        self.end = 0          # the live file's size
        self.unflushed = 0    # where its rows not yet in the history start
        self.first_row_at: float | None = None
        self._last_flush = time.monotonic()
        self._flushing: asyncio.Task[None] | None = None
        self._flush_failed = False
        self._wake = asyncio.Event()
        self._halt = threading.Event()

    async def open(self, f: IO[bytes], first_row_at: float | None) -> None:
        """Take up the live file at start: finish what a killed flush left, and find where
        the rows not yet in the history start."""
        self._file = f
        self.end = f.seek(0, os.SEEK_END)
        self.first_row_at = first_row_at
        self.unflushed = len(self.header)
        if self.history is not None:
            try:
                self.unflushed = await asyncio.to_thread(self.history.recover, f)
            except (HistoryError, OSError, pa.ArrowException) as exc:
                log.error("history switched off until the metric role restarts: %s", exc)
                health.report_problem(PROBLEM, f"history switched off: {exc}")
                self.history = None
        self._last_flush = time.monotonic()

    def rotated(self, f: IO[bytes]) -> None:
        """Take up the new live file a rotation started (the history has every row
        before it)."""
        self._file = f
        self.end = self.unflushed = f.seek(0, os.SEEK_END)
        self.first_row_at = None

    def wrote(self, end: int, now: float) -> None:
        self.end = end
        if self.history is not None:
            telemetry.HISTORY_BEHIND_BYTES.set(end - self.unflushed)
        if self.first_row_at is None:
            self.first_row_at = now

    def flush_due(self) -> None:
        """Start a flush in the background when the last was long enough ago."""
        if self._flushing is not None and self._flushing.done():
            self._flushing = None
        if self.history is None or self._flushing is not None or self.end <= self.unflushed:
            return
        if (time.monotonic() - self._last_flush >= self.policy.flush_seconds
                or self.end - self.unflushed >= MAX_FLUSH_BYTES):
            self._flushing = asyncio.create_task(self._flush(self._file, self.end))

    async def _flush(self, f: IO[bytes], stop: int) -> None:
        assert self.history is not None
        self._last_flush = time.monotonic()
        try:
            await asyncio.to_thread(self._flush_span, f, stop)
        except (OSError, pa.ArrowException, HistoryError) as exc:
            log.warning("history: rows not written yet (%s); trying again in %.0f s",
                        exc, self.policy.flush_seconds)
            health.report_problem(PROBLEM, f"history not written: {exc}")
            self._flush_failed = True
        else:
            health.clear_problem(PROBLEM)
            self._flush_failed = False

    def _flush_span(self, f: IO[bytes], stop: int) -> None:
        """Flush the log from `unflushed` to `stop` in pieces, moving `unflushed` past each
        piece the history has taken (so a failure part-way resumes after it)."""
        assert self.history is not None
        while self.unflushed < stop:
            # A flush that failed part-way is tried again over exactly the same bytes.
            size = self.history.pending_bytes or min(stop - self.unflushed, MAX_FLUSH_BYTES)
            data = whole_lines(os.pread(f.fileno(), size, self.unflushed))
            if not data:
                break
            started = time.perf_counter()
            self.history.flush(data)
            telemetry.HISTORY_FLUSH_SECONDS.observe(time.perf_counter() - started)
            telemetry.HISTORY_ROWS.inc(data.count(b"\n"))
            self.unflushed += len(data)
            telemetry.HISTORY_BEHIND_BYTES.set(max(0, self.end - self.unflushed))

    async def settle(self) -> bool:
        """Put every row written so far into the history; whether that worked."""
        if self._flushing is not None:
            await self._flushing
            self._flushing = None
        if self.history is not None and self.end > self.unflushed:
            await self._flush(self._file, self.end)
        return self.history is None or self.unflushed >= self.end

    def rotation_due(self, now: float) -> bool:
        if self.first_row_at is None:
            return False
        p = self.policy
        if p.rotate_bytes and self.end >= p.rotate_bytes:
            return True
        return bool(p.rotate_interval) and (
            now // p.rotate_interval > self.first_row_at // p.rotate_interval)

    async def rotate(self) -> bool:
        """Rotate the live file once the history has its rows; whether it was moved (the
        sink then opens the new live file, even if starting it failed)."""
        if self._flush_failed and (time.monotonic() - self._last_flush
                                   < self.policy.flush_seconds):
            return False  # the history failed a moment ago: not again on every pass
        if not await self.settle():
            return False
        last = tail_pos(self._file)
        try:
            await asyncio.to_thread(logfiles.rotate, self.live, last, self.header, time.time())
        except OSError as exc:
            log.warning("cannot rotate %s yet: %s", self.live, exc)
            return not self.live.exists()
        telemetry.LOG_ROTATIONS.inc()
        self._wake.set()
        return True

    # --- upkeep ---------------------------------------------------------------------

    async def upkeep(self, stop: asyncio.Event) -> None:
        """Compress, expire and compact until `stop` is set."""
        while not stop.is_set():
            if self.drift is not None and self.history is not None:
                await self._copy_drift()
            try:
                await asyncio.to_thread(self.upkeep_once, time.time())
            except Exception:
                log.exception("metric log upkeep failed; trying again later")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.policy.upkeep_seconds):
                    await first_of(stop, self._wake)

    async def _copy_drift(self) -> None:
        assert self.drift is not None
        assert self.redis is not None
        assert self.policy.drift_keep is not None
        try:
            await self.drift.export(self.redis, time.time(), self.policy.drift_keep)
        except (*TRANSIENT_ERRORS, OSError, pa.ArrowException) as exc:
            log.warning("history: drift counts not copied yet (%s); trying again in %.0f s",
                        exc, self.policy.upkeep_seconds)

    def halt(self) -> None:
        """Ask a running upkeep step to stop at its next safe point."""
        self._halt.set()

    def upkeep_once(self, now: float) -> None:
        p = self.policy
        if p.compress:
            for path, _when in logfiles.rotated_files(self.live):
                if self._halt.is_set():
                    return
                if path.suffix == ".csv":
                    try:
                        logfiles.compress(path, self._halt)
                    except logfiles.Halted:
                        return
        gone = logfiles.expire(self.live, now, p.keep_days)
        if gone:
            log.info("removed %d rotated log file(s) older than %g days", gone, p.keep_days)
        if self.history is not None and not self._halt.is_set():
            self.history.compact(now - p.flush_seconds - COMPACT_GRACE, self._halt)
            self.history.retain(now, p.history_days, p.rollup_days)
