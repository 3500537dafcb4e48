"""Metric logs as the sink writes them, for history tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO

import orjson

from mlpulse.pipeline.sink import _append, format_rows, recover


def write_log(path: Path, entries: int = 40, per_entry: int = 50, span: float = 7200.0,
              start: float | None = None, versions: tuple[str, ...] = ("v1", "v2"),
              first_entry: int = 1_700_000_000_000) -> list[tuple[str, str, float, float]]:
    """Append `entries` outbox entries of rows joined evenly over `span` seconds before now;
    returns (id, version, joined_at, absolute_error) per row."""
    f, _ = recover(path)
    try:
        return _rows(f, entries, per_entry, span, start, versions, first_entry)
    finally:
        f.close()


def _rows(f: IO[bytes], entries: int, per_entry: int, span: float, start: float | None,
          versions: tuple[str, ...], first_entry: int) -> list[tuple[str, str, float, float]]:
    begin = time.time() - span if start is None else start
    rows = []
    for e in range(entries):
        at = round(begin + span * e / entries, 6)
        batch = []
        for i in range(per_entry):
            rid = f"r{e}-{i}"
            version = versions[(e + i) % len(versions)]
            y_pred = 100.0 + ((e * 7 + i * 13) % 97) * 1.25
            batch.append([rid, "100.0", repr(y_pred), version, "", ""])
            rows.append((rid, version, at, abs(100.0 - y_pred)))
        text = format_rows(f"{first_entry + e}-0", {b"at": repr(at).encode(),
                                                     b"rows": orjson.dumps(batch)}, -1,
                           time.time())
        _append(f, text.encode())
    return rows


def body(f: IO[bytes], start: int) -> bytes:
    """The log's bytes from `start` to its end."""
    end = f.seek(0, 2)
    f.seek(start)
    return f.read(end - start)
