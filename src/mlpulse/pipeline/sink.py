"""The CSV sink: copies joined rows from the Redis outbox to `metric_log.csv`, exactly once.

Every row ends with its position in the outbox (`<entry id>:<index>`). After a crash the
sink cuts a torn last line, reads the last position back from the file, and resumes right
after it; outbox entries are trimmed only once their rows are on disk. A file lock makes
one sink the writer when several metric processes share the log.

No field can hold a line break (the wire refuses control characters in ids and versions,
and every other field is a number or a time), so one line is one record, and a tail cut
at any byte is a torn last line. A write that fails (a full disk) is cut back off the
file and tried again until it lands; the outbox keeps the rows meanwhile.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import fcntl
import io
import logging
import os
import re
import time
from pathlib import Path
from typing import IO, Any

import orjson
import redis.exceptions

from mlpulse import health
from mlpulse.errors import TRANSIENT_ERRORS, MlpulseError
from mlpulse.history.layout import LOG_COLUMNS
from mlpulse.keys import JOINED
from mlpulse.pipeline import logfiles
from mlpulse.pipeline.archive import Archive, LogPolicy
from mlpulse.pipeline.changes import ErrorChanges
from mlpulse.store import Redis, refusal
from mlpulse.waiting import Backoff, stopped_within

log = logging.getLogger(__name__)

HEADER = LOG_COLUMNS
HEADER_LINE = (",".join(HEADER) + "\n").encode()
_TAIL_BYTES = 1 << 20
_POS = re.compile(r"^(\d+-\d+):(\d+)$")
PROBLEM = "metric log"
# Seconds the change detector may fail to save before it is switched off.
OBSERVER_PATIENCE = 60.0


class ForeignLog(MlpulseError):
    """The log's last line is not a row this sink wrote."""


def recover(path: Path, starting: bool = True) -> tuple[IO[bytes], tuple[str, int] | None]:
    """Open the log for appending after cutting a torn last line; return the last position.

    A live file with no rows yet follows on from the last rotated one (see `logfiles`).
    At a start, the compressions a killed process left are settled first. Not when the
    sink opens the live file a rotation started: the upkeep may be compressing a rotated
    file then, and its part file would be taken for a dead one (dropped, or put in place
    under the compression), and the rotated file lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if starting:
        logfiles.finish_compressions(path)
    f = path.open("a+b", buffering=0)
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        try:
            _append(f, HEADER_LINE)
        except OSError:
            f.close()
            raise
        return f, _rotated_pos(path)
    start = max(0, size - _TAIL_BYTES)
    f.seek(start)
    tail = f.read()
    end = tail.rfind(b"\n")
    if end + 1 != len(tail):
        keep = start + end + 1 if end >= 0 else 0
        log.warning("cutting a torn last line from %s (%d bytes)", path, size - keep)
        f.truncate(keep)
        os.fsync(f.fileno())
        if keep == 0:
            f.close()
            return recover(path, starting=False)
    last = tail[: end].rsplit(b"\n", 1)[-1].decode("utf-8", "replace")
    row = next(csv.reader([last]), [])
    if row == list(HEADER):
        return f, _rotated_pos(path)
    pos = _POS.match(row[-1]) if len(row) == len(HEADER) else None
    if pos is None:
        f.close()
        raise ForeignLog(f"{path}: the last line is not a row of this log ({last[:80]!r}); "
                         "move the file aside and start again")
    return f, (pos.group(1), int(pos.group(2)))


def _rotated_pos(path: Path) -> tuple[str, int] | None:
    text = logfiles.rotated_pos(path)
    pos = _POS.match(text) if text else None
    return (pos.group(1), int(pos.group(2))) if pos else None


def first_row_time(f: IO[bytes]) -> float | None:
    """When the log's first row was written (its `logged_at`), or None with no rows."""
    f.seek(0)
    f.readline()
    line = f.readline()
    if not line.endswith(b"\n"):
        return None
    row = next(csv.reader([line.decode("utf-8", "replace")]), [])
    try:
        return float(row[HEADER.index("logged_at")])
    except (IndexError, ValueError):
        return None


def _fmt_time(text: str) -> str:
    return f"{float(text):.6f}" if text else ""


def format_rows(entry: str, fields: dict[bytes, bytes], skip_through: int, now: float) -> str:
    """CSV lines for one outbox entry, leaving out indices up to `skip_through`."""
    joined_at = _fmt_time(fields[b"at"].decode())
    logged_at = f"{now:.6f}"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for index, (rid, t, p, version, t_ts, p_ts) in enumerate(orjson.loads(fields[b"rows"])):
        if index <= skip_through:
            continue
        # A send time is a number; a prediction's meta written by a newer joiner may
        # carry more after a ";" (its drift bucket), which is not the log's.
        sent = [float(x.partition(";")[0]) for x in (t_ts, p_ts) if x and x[0] != ";"]
        writer.writerow((
            rid, t, p, repr(abs(float(t) - float(p))), version,
            f"{min(sent):.6f}" if sent else "", joined_at, logged_at, f"{entry}:{index}",
        ))
    return buf.getvalue()


class CsvSink:
    """The single writer of the metric log."""

    def __init__(self, path: Path, redis: Redis, observer: ErrorChanges | None = None,
                 policy: LogPolicy | None = None) -> None:
        self.path = path
        self.redis = redis
        # Sees every entry once its rows are on disk, and holds back the trim until then.
        self.observer = observer
        self._observer_failing: float | None = None
        # Rotation, the Parquet history and upkeep, behind the live file.
        self.archive = Archive(path, policy or LogPolicy(), HEADER_LINE, redis)
        self._f: IO[bytes]

    async def run(self, finish: asyncio.Event) -> None:
        """Copy rows until `finish` is set and the outbox is drained."""
        lock = await self._acquire(finish)
        if lock is None:
            return
        try:
            opened = await self._open(finish)
            if opened is None:
                return
            self._f, pos = opened
            upkeep_stop = asyncio.Event()
            upkeep: asyncio.Task[None] | None = None
            try:
                await self.archive.open(self._f, await asyncio.to_thread(first_row_time,
                                                                         self._f))
                upkeep = asyncio.create_task(self.archive.upkeep(upkeep_stop), name="upkeep")
                if await self._copy(pos, finish):
                    await self.archive.settle()  # drained: the history takes the rest
            finally:
                upkeep_stop.set()
                self.archive.halt()
                if upkeep is not None:
                    await upkeep
                self._f.close()
        finally:
            lock.close()

    async def _open(self, finish: asyncio.Event, starting: bool = True
                    ) -> tuple[IO[bytes], tuple[str, int] | None] | None:
        """Recover the log, waiting while the disk refuses even its header."""
        backoff = Backoff(0.5)
        while True:
            try:
                opened = await asyncio.to_thread(recover, self.path, starting)
            except ForeignLog:
                raise
            except OSError as exc:
                problem = f"cannot open {self.path}: {exc.strerror or exc}"
            else:
                health.clear_problem(PROBLEM)
                return opened
            delay = backoff.next()
            log.warning("%s; retrying in %.1fs", problem, delay)
            health.report_problem(PROBLEM, problem)
            if await stopped_within(finish, delay):
                return None

    async def _acquire(self, finish: asyncio.Event) -> IO[str] | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = (self.path.parent / (self.path.name + ".lock")).open("a")
        announced = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                log.info("writing %s", self.path)
                return lock
            except BlockingIOError:
                if not announced:
                    log.info("another metric process writes %s; standing by", self.path)
                    announced = True
            if await stopped_within(finish, 1.0):
                lock.close()
                return None

    async def _copy(self, pos: tuple[str, int] | None, finish: asyncio.Event) -> bool:
        """Copy until drained after `finish`; False if it had to stop short of that."""
        # After a restart, the entry of the last row written may have rows left after it.
        resume = pos
        last_id = pos[0] if pos else "0-0"
        # Written but not yet observed and trimmed: (the entry before them, the entries).
        unsettled: tuple[str | None, list[Any]] | None = None
        backoff = Backoff()
        while True:
            draining = finish.is_set()
            try:
                if resume is not None:
                    rest: Any = await self.redis.xrange(JOINED, resume[0], resume[0])
                    await self._write([(e, flds, resume[1]) for e, flds in rest])
                    resume = None
                reply: Any = await self.redis.xread({JOINED: last_id}, count=500,
                                                    block=None if draining else 200)
                entries = reply[0][1] if reply else []
                if entries:
                    await self._write([(e, flds, -1) for e, flds in entries])
                    before, last_id = last_id, entries[-1][0].decode()
                    unsettled = (before, entries)
                if unsettled is not None:
                    # Observed and trimmed through `last_id`; tried again on every pass
                    # until it is, new entries or not, so a full outbox always drains.
                    await self._settle(last_id, *unsettled)
                    unsettled = None
                if not entries and draining:
                    return True
                backoff.reset()
                if not await self._archive_step(finish):
                    return False
            except WAITED_OUT as exc:
                # What is on disk stays, and nothing of a failed write does; `last_id`
                # moves only after a write, so the same rows are written again once the
                # disk or Redis is back, never twice, and an untrimmed entry is trimmed
                # with the next one.
                if draining:
                    log.warning("stopping with the outbox not drained (%s); the next start "
                                "writes the rest from the log's last position", exc)
                    return False
                if isinstance(exc, DiskProblem):
                    health.report_problem(PROBLEM, str(exc))
                delay = backoff.next()
                log.warning("the sink is waiting (%s); retrying in %.1fs, and joins hold "
                            "their messages once the outbox is full", exc, delay)
                await stopped_within(finish, delay)

    async def _archive_step(self, finish: asyncio.Event) -> bool:
        """Flush the history or rotate the live file when due; False if the sink must stop
        (a rotated-away live file could not be started again before the stop)."""
        self.archive.flush_due()
        if not self.archive.rotation_due(time.time()) or not await self.archive.rotate():
            return True
        self._f.close()
        opened = await self._open(finish, starting=False)
        if opened is None:
            return False
        self._f = opened[0]
        self.archive.rotated(self._f)
        return True

    async def _settle(self, last_id: str, before: str | None,
                      entries: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        """Let the observer see the entries written, then trim what both are done with."""
        keep = last_id
        if self.observer is not None:
            await self._observe(before, last_id, entries)
            if self.observer is not None:
                keep = _earlier(last_id, self.observer.holds())
        await self._trim(keep)

    async def _observe(self, before: str | None, last_id: str,
                       entries: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        assert self.observer is not None
        try:
            await self.observer.observe(before, last_id, entries)
            self._observer_failing = None
        except WAITED_OUT:
            # The observer holds the trim back while it cannot save; not for long, or
            # the outbox would fill and stop the joins.
            now = time.monotonic()
            self._observer_failing = self._observer_failing or now
            if now - self._observer_failing < OBSERVER_PATIENCE:
                raise
            log.error("the error-change detector could not save its state for %.0f s; it "
                      "is switched off until the metric role restarts", OBSERVER_PATIENCE)
            self.observer = None
        except Exception:
            # A fault in the detector must not hold the log back: it is switched off, and
            # the log goes on.
            log.exception("the error-change detector failed and is switched off until "
                          "the metric role restarts")
            self.observer = None

    async def _write(self, entries: list[tuple[Any, dict[bytes, bytes], int]]) -> None:
        if not entries:
            return
        now = time.time()
        data = "".join(format_rows(_text(entry), fields, skip, now)
                       for entry, fields, skip in entries).encode()
        try:
            end = await asyncio.to_thread(_append, self._f, data)
        except OSError as exc:
            raise DiskProblem(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.archive.wrote(end, now)
        if health.clear_problem(PROBLEM):
            log.info("writing %s again", self.path)

    async def _trim(self, last_id: str) -> None:
        # Everything before the last entry is on disk; the last one is kept so the
        # position in the file always names an entry that still exists.
        try:
            await self.redis.xtrim(JOINED, minid=last_id)
        except redis.exceptions.ResponseError as exc:
            waiting = refusal(exc)
            if waiting is None:
                raise
            raise waiting from exc


def _earlier(a: str, b: str | None) -> str:
    """The earlier of two stream entry ids."""
    if b is None:
        return a
    return min(a, b, key=lambda e: tuple(int(x) for x in e.split("-")))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DiskProblem(MlpulseError):
    """The log cannot be written right now (a full disk, a quota, an I/O error)."""


# What the sink waits out, trying again: the disk, Redis or the broker being away.
WAITED_OUT: tuple[type[BaseException], ...] = (DiskProblem, *TRANSIENT_ERRORS)


def _append(f: IO[bytes], data: bytes) -> int:
    """Append all of `data` and fsync, or leave the file as it was and raise `OSError`;
    returns the file's new size."""
    start = f.seek(0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            written = f.write(view)
            if not written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]
        os.fsync(f.fileno())
    except OSError:
        f.truncate(start)  # a partial row must not stay: it would be written again
        raise
    return start + len(data)
