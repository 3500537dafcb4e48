"""Uploads: a multipart body streamed to disk under a size limit (checked in csv_checks)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 64 * 1024


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
        with contextlib.suppress(OSError):  # a full disk may refuse the flush too
            self.close()
        self.dest.unlink(missing_ok=True)

    def close(self) -> None:
        """Flush the file part to disk, and close it whatever happens."""
        sink, self.sink = self.sink, None
        if sink is None:
            return
        try:
            sink.flush()
            os.fsync(sink.fileno())
        finally:
            sink.close()


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
        parts.close()
    except HTTPException:
        parts.discard()
        raise
    except OSError as exc:  # the disk is full, or refuses the file
        parts.discard()
        raise HTTPException(507, f"the gateway cannot store the upload now: "
                                 f"{exc.strerror or exc}") from None
    except Exception as exc:  # python-multipart raises its own errors for a broken body
        parts.discard()
        raise HTTPException(400, f"not a valid multipart body: {exc}") from None
    return parts.form
