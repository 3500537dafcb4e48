"""The metric log's files: rotating the live file, compressing and expiring rotated ones.

A rotation renames `metric_log.csv` to `metric_log-<UTC time>.csv` and starts a new live
file with the header. Just before the rename it writes the live file's last position to
`.metric_log.csv.rotated`, so a sink that starts on a live file with no rows yet knows
where the outbox stands (it would otherwise write the last entry's rows again).

Compression writes `.X.csv.gz.part`, fsyncs it, removes `X.csv`, then renames the part to
`X.csv.gz`. So the two never exist together, and a part with no `X.csv` beside it is
whole: the next start renames it into place; a part with `X.csv` beside it is dropped.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson

from mlpulse.history.layout import fsync_dir, write_atomic

log = logging.getLogger(__name__)

_STAMP = "%Y%m%dT%H%M%S.%fZ"
_CHUNK = 1 << 20
# Fast gzip: a day's log compresses about as well at level 1, in a third of the time.
GZIP_LEVEL = 1


def _rotated(live: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(live.stem)}-(\d{{8}}T\d{{6}}\.\d{{6}}Z)\.csv(\.gz)?$")


def sidecar(live: Path) -> Path:
    return live.with_name(f".{live.name}.rotated")


def rotated_files(live: Path) -> list[tuple[Path, datetime]]:
    """The rotated files beside `live`, oldest first, with the time each was rotated."""
    pattern = _rotated(live)
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(live.parent):
            m = pattern.match(entry.name)
            if m:
                when = datetime.strptime(m.group(1), _STAMP).replace(tzinfo=UTC)
                found.append((Path(entry.path), when))
    return sorted(found, key=lambda f: f[1])


def rotated_pos(live: Path) -> str | None:
    """The position the live file's rows follow on from, when it has none yet."""
    try:
        doc = orjson.loads(sidecar(live).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    pos = doc.get("pos")
    return pos if isinstance(pos, str) else None


def create_live(live: Path, header: bytes) -> None:
    write_atomic(live, lambda fh: fh.write(header))


def rotate(live: Path, last_pos: str | None, header: bytes, now: float) -> Path:
    """Move the live file aside and start a new one; returns the rotated file's path."""
    when = datetime.fromtimestamp(now, UTC)
    target = live.with_name(f"{live.stem}-{when.strftime(_STAMP)}.csv")
    while target.exists() or target.with_name(target.name + ".gz").exists():
        when = when.replace(microsecond=(when.microsecond + 1) % 1_000_000)
        target = live.with_name(f"{live.stem}-{when.strftime(_STAMP)}.csv")
    doc = {"pos": last_pos, "to": target.name}
    write_atomic(sidecar(live), lambda fh: fh.write(orjson.dumps(doc)))
    os.rename(live, target)
    fsync_dir(live.parent)
    create_live(live, header)
    log.info("rotated %s to %s", live.name, target.name)
    return target


def finish_compressions(live: Path) -> None:
    """Settle the compressions a killed process left: keep whole ones, drop the rest."""
    pattern = _rotated(live)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(live.parent):
            name = entry.name
            if not (name.startswith(".") and name.endswith(".csv.gz.part")):
                continue
            gz = name[1:-len(".part")]
            if not pattern.match(gz):
                continue
            plain = live.parent / gz[:-len(".gz")]
            part = Path(entry.path)
            if plain.exists():
                part.unlink()
            else:
                os.replace(part, live.parent / gz)
                fsync_dir(live.parent)


class Halted(Exception):
    """A compression was asked to stop before it finished (the plain file stays)."""


def compress(path: Path, halt: threading.Event | None = None) -> Path:
    """gzip a rotated file in place of the plain one; returns the `.csv.gz` path."""
    gz = path.with_name(path.name + ".gz")
    part = path.with_name(f".{gz.name}.part")
    try:
        with path.open("rb") as src, part.open("wb") as raw:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw,
                               compresslevel=GZIP_LEVEL, mtime=0) as out:
                while chunk := src.read(_CHUNK):
                    if halt is not None and halt.is_set():
                        raise Halted(path.name)
                    out.write(chunk)
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.unlink(path)
    os.replace(part, gz)
    fsync_dir(path.parent)
    return gz


def expire(live: Path, now: float, days: float) -> int:
    """Remove rotated files rotated more than `days` ago; returns how many went."""
    cutoff = now - days * 86400
    removed = 0
    for path, when in rotated_files(live):
        if when.timestamp() < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
