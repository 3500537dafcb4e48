"""`mlpulse history export`: the history's rows of a range as CSV, an hour at a time."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pyarrow.csv as pacsv

from mlpulse.history import query
from mlpulse.history.layout import LOG_COLUMNS

log = logging.getLogger(__name__)


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 time (UTC unless it names its zone)."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a time")
        return value
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither Unix seconds nor an ISO 8601 time "
                         "(for example 2026-11-24T13:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def export(root: Path, since: float, until: float, version: str | None,
           out: BinaryIO) -> tuple[int, int]:
    """Write the header and every row joined in [since, until); returns (rows, files
    skipped)."""
    out.write((",".join(LOG_COLUMNS) + "\n").encode())
    rows = skipped = 0
    options = pacsv.WriteOptions(include_header=False)
    for table, missed in query.iter_rows(root, since, until, version):
        skipped += len(missed)
        if len(table):
            pacsv.write_csv(table, out, options)  # files and rows are in log order
            rows += len(table)
    out.flush()
    return rows, skipped
