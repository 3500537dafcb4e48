"""Checks of an uploaded CSV before a task is queued: 422 naming the first bad line or cell.

They run in a worker thread: pandas parses in C, a million rows in about a second.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import HTTPException

if TYPE_CHECKING:
    import pandas as pd

CHECK_CHUNK_ROWS = 200_000
SCAN_BLOCK = 1 << 20  # bytes decoded at a time while looking for the first non-UTF-8 byte
ID_COLUMN = "id"
_OPEN_QUOTE = re.compile(r"EOF inside string starting at row (\d+)")


@dataclass
class CheckedCsv:
    """What scoring needs to know about a valid upload."""

    rows: int
    id_column: str | None


def check_features_csv(path: Path, features: list[str]) -> CheckedCsv:
    """Every row must hold a finite number for each feature; 422 naming the first bad cell."""
    first = _first_line(path)
    if not first:
        raise HTTPException(422, "the CSV is empty: expected a header row of feature names")
    header = [h.strip() for h in first.split(",")]
    missing = [f for f in features if f not in header]
    unknown = [h for h in header if h not in features and h != ID_COLUMN]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        raise HTTPException(422, f"header: {'; '.join(parts)}. Expected the model's features "
                                 f"{', '.join(features)}, and optionally '{ID_COLUMN}'")
    if len(set(header)) != len(header):
        raise HTTPException(422, "header: a column name appears twice")
    rows = _check_cells(path, header, features)
    return CheckedCsv(rows, ID_COLUMN if ID_COLUMN in header else None)


def check_training_csv(path: Path, target: str) -> int:
    """A CSV to train on: every cell a finite number, one column named `target`; 422
    naming the first problem. Returns the number of rows."""
    first = _first_line(path)
    if not first:
        raise HTTPException(422, "the CSV is empty: expected a header row of column names")
    # The worker reads it with the csv module, names as they are written.
    try:
        header = next(csv.reader([first]))
    except csv.Error as exc:  # a header field past the csv module's own limit
        raise HTTPException(422, f"header: {exc}") from None
    if target not in header:
        raise HTTPException(422, f"header: no column named {target!r} to train on "
                                 f"(columns: {', '.join(header)})")
    if len(set(header)) != len(header):
        raise HTTPException(422, "header: a column name appears twice")
    return _check_cells(path, header, header)


def _first_line(path: Path) -> str:
    with path.open("rb") as f:
        first = f.readline()
    try:
        return first.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise HTTPException(422, _not_utf8(first[exc.start:exc.start + 1], 1,
                                           exc.start + 1)) from None


def _check_cells(path: Path, header: list[str], numeric: list[str]) -> int:
    """Rows after the header, each with a finite number in every `numeric` column (other
    columns are text); 422 naming the first bad cell, line or byte."""
    import pandas as pd  # imported on the first upload, not at the gateway's start
    rows = 0
    dtypes: dict[str, Any] = {name: str for name in header}
    dtypes.update({name: np.float64 for name in numeric})
    # pandas only warns when the first row is longer than the header, and drops the extra
    # cells; that is an error here like any other ragged line. It is counted here: a
    # warnings filter is process-wide, and uploads are checked in threads side by side.
    if _fields_in_first_row(path) > len(header):
        raise HTTPException(422, f"row 1 (line 2) has more fields than the header's "
                                 f"{len(header)} columns")
    try:
        with pd.read_csv(path, dtype=dtypes, chunksize=CHECK_CHUNK_ROWS, names=header,
                         header=0, index_col=False, encoding="utf-8-sig") as reader:
            for chunk in reader:
                _check_finite(chunk, numeric, rows)
                rows += len(chunk)
    except UnicodeDecodeError:  # before ValueError, which it is a kind of
        raise HTTPException(422, _first_bad_utf8(path)) from None
    except ValueError as exc:  # a cell that is not a number, a ragged line, an open quote
        raise HTTPException(422, _locate(path, header, numeric, rows, exc)) from None
    if rows == 0:
        raise HTTPException(422, "the CSV has a header but no rows")
    return rows


def _fields_in_first_row(path: Path) -> int:
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        rows = csv.reader(f)
        try:
            next(rows, None)
            return len(next(rows, []))
        except csv.Error:
            return 0  # pandas reads it and names the problem


def _not_utf8(byte: bytes, line: int, column: int) -> str:
    return (f"line {line} is not UTF-8: byte 0x{byte.hex()} at position {column} of the "
            "line; save the CSV as UTF-8 and send it again")


def _first_bad_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 sits, as a line a person can find."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, line_start, offset = 1, 0, 0  # offset: where the block starts in the file
    with path.open("rb") as f:
        while True:
            block = f.read(SCAN_BLOCK)
            pending = len(decoder.getstate()[0])  # the start of a character cut by a block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                head = block[:max(0, at - offset)]
                if b"\n" in head:
                    line += head.count(b"\n")
                    line_start = offset + head.rindex(b"\n") + 1
                return _not_utf8(exc.object[exc.start:exc.start + 1], line, at - line_start + 1)
            if not block:
                return "the CSV is not UTF-8: save it as UTF-8 and send it again"
            if b"\n" in block:
                line += block.count(b"\n")
                line_start = offset + block.rindex(b"\n") + 1
            offset += len(block)


def _check_finite(chunk: pd.DataFrame, features: list[str], before: int) -> None:
    values = chunk[features].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = (int(i[0]) for i in np.nonzero(bad))
        raw = values[r, c]
        what = "is empty" if math.isnan(raw) else f"is {raw!r}, not a finite number"
        raise HTTPException(422, f"row {before + r + 1} (line {before + r + 2}), column "
                                 f"'{features[c]}' {what}")


def _locate(path: Path, header: list[str], features: list[str], before: int,
            exc: ValueError) -> str:
    """Find the first cell pandas refused, for a message a person can act on."""
    import pandas as pd
    text = str(exc).strip()
    if "Expected" in text and "fields" in text:
        return f"{text} (the header has {len(header)} columns)"
    quote = _OPEN_QUOTE.search(text)
    if quote:  # pandas counts lines from 0, the header being line 0
        row = int(quote.group(1))
        return (f"row {row} (line {row + 1}): a quote opens a field here and is never "
                "closed; close it, or double a quote that is part of a value (\"\")")
    try:
        frame = pd.read_csv(path, dtype=str, names=header, skiprows=1 + before,
                            index_col=False, nrows=CHECK_CHUNK_ROWS, keep_default_na=False,
                            encoding="utf-8-sig")
    except ValueError:
        return f"the CSV could not be read: {text}"
    for col in features:
        numbers = pd.to_numeric(frame[col], errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() & (frame[col] != "").to_numpy())
        if bad.size:
            r = int(bad[0])
            return (f"row {before + r + 1} (line {before + r + 2}), column '{col}': "
                    f"{frame[col].iloc[r]!r} is not a number")
    return f"the CSV could not be read: {exc}"
