"""Uploads: a multipart body streamed to disk under a size limit, then checked as a CSV."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    import pandas as pd

MAX_FIELD_BYTES = 64 * 1024
CHECK_CHUNK_ROWS = 200_000
ID_COLUMN = "id"


@dataclass
class Form:
    """Text fields of a multipart body, and where its `file` part was written."""

    fields: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    filename: str | None = None


class _Parts:
    """python-multipart callbacks: the `file` part goes to disk, other parts to memory."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.form = Form()
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None
        self.sink: BinaryIO | None = None
        self.buffer = bytearray()

    def on_part_begin(self) -> None:
        self.headers, self.name, self.buffer = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = params.get(b"name", b"").decode("utf-8", "replace")
        if self.name == "file":
            if self.sink is not None:
                raise HTTPException(400, "send one part named 'file', not several")
            self.form.filename = params.get(b"filename", b"upload.csv").decode("utf-8",
                                                                               "replace")
            self.sink = self.dest.open("wb")
            self.form.file = self.dest

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.name == "file" and self.sink is not None:
            self.sink.write(data[start:end])
        else:
            self.buffer += data[start:end]
            if len(self.buffer) > MAX_FIELD_BYTES:
                raise HTTPException(413, f"form field {self.name!r} is over {MAX_FIELD_BYTES} "
                                         "bytes")

    def on_part_end(self) -> None:
        if self.name and self.name != "file":
            self.form.fields[self.name] = self.buffer.decode("utf-8", "replace")

    def discard(self) -> None:
        """Close and delete a refused upload."""
        self.close()
        self.dest.unlink(missing_ok=True)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.flush()
            os.fsync(self.sink.fileno())
            self.sink.close()


async def receive_form(request: Request, dest: Path, max_bytes: int) -> Form:
    """Stream a multipart body, writing its `file` part to `dest`; 413 past `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"the upload is {int(declared):,} bytes; the limit is "
                                 f"{max_bytes:,} (MLPULSE_MAX_UPLOAD_BYTES)")
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise HTTPException(415, "send multipart/form-data with the CSV in a part named 'file'")
    parts = _Parts(dest)
    callbacks: Any = {name: getattr(parts, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished", "on_part_data", "on_part_end")}
    parser = MultipartParser(params[b"boundary"], callbacks)
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_bytes:
                raise HTTPException(413, f"the upload is over the limit of {max_bytes:,} bytes "
                                         "(MLPULSE_MAX_UPLOAD_BYTES)")
            parser.write(chunk)
        parser.finalize()
    except HTTPException:
        parts.discard()
        raise
    except Exception as exc:  # python-multipart raises its own errors for a broken body
        parts.discard()
        raise HTTPException(400, f"not a valid multipart body: {exc}") from None
    parts.close()
    return parts.form


@dataclass
class CheckedCsv:
    """What scoring needs to know about a valid upload."""

    rows: int
    id_column: str | None


def check_features_csv(path: Path, features: list[str]) -> CheckedCsv:
    """Every row must hold a finite number for each feature; 422 naming the first bad cell.

    Runs in a worker thread: pandas parses in C, a million rows in about a second."""
    import pandas as pd  # imported on the first upload, not at the gateway's start
    with path.open("rb") as f:
        first = f.readline().decode("utf-8-sig", "replace").strip()
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
    rows = 0
    dtypes: dict[str, Any] = {name: np.float64 for name in features}
    if ID_COLUMN in header:
        dtypes[ID_COLUMN] = str
    try:
        with warnings.catch_warnings(), pd.read_csv(
                path, dtype=dtypes, chunksize=CHECK_CHUNK_ROWS, names=header, header=0,
                index_col=False, encoding="utf-8-sig") as reader:
            # pandas only warns when the first row is longer than the header, and drops
            # the extra cells; that is an error here like any other ragged line.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            for chunk in reader:
                _check_finite(chunk, features, rows)
                rows += len(chunk)
    except pd.errors.ParserWarning:
        raise HTTPException(422, f"row 1 (line 2) has more fields than the header's "
                                 f"{len(header)} columns") from None
    except ValueError as exc:  # a cell that is not a number, or a ragged line
        raise HTTPException(422, _locate(path, header, features, rows, exc)) from None
    if rows == 0:
        raise HTTPException(422, "the CSV has a header but no rows")
    return CheckedCsv(rows, ID_COLUMN if ID_COLUMN in header else None)


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
    if "Expected" in str(exc) and "fields" in str(exc):
        return f"{str(exc).strip()} (the header has {len(header)} columns)"
    frame = pd.read_csv(path, dtype=str, names=header, skiprows=1 + before, index_col=False,
                        nrows=CHECK_CHUNK_ROWS, keep_default_na=False, encoding="utf-8-sig")
    for col in features:
        numbers = pd.to_numeric(frame[col], errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() & (frame[col] != "").to_numpy())
        if bad.size:
            r = int(bad[0])
            return (f"row {before + r + 1} (line {before + r + 2}), column '{col}': "
                    f"{frame[col].iloc[r]!r} is not a number")
    return f"the CSV could not be read: {exc}"
