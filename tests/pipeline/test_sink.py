"""Crash recovery of the CSV sink, on files as a killed process leaves them."""

from __future__ import annotations

import csv
import errno
import io
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from mlpulse.pipeline.sink import HEADER, ForeignLog, _append, format_rows, recover

HEAD = ",".join(HEADER) + "\n"


def test_a_new_log_gets_its_header(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metric_log.csv"
    f, pos = recover(path)
    f.close()
    assert pos is None
    assert path.read_text() == HEAD


def test_a_torn_last_line_is_cut_and_the_position_read_back(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    good = "a,1.0,2.0,1.0,v1,,1.0,1.0,1700-0:0\nb,1.0,3.0,2.0,v1,,1.0,1.0,1700-0:1\n"
    path.write_text(HEAD + good + "c,1.0,4.")
    f, pos = recover(path)
    f.close()
    assert pos == ("1700-0", 1)
    assert path.read_text() == HEAD + good


def test_a_torn_header_starts_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text("id,y_tr")
    f, pos = recover(path)
    f.close()
    assert pos is None
    assert path.read_text() == HEAD


def test_ids_that_need_quoting_survive_and_positions_skip_written_rows() -> None:
    rows = b'[["x,\\"y\\"","1.5","2.0","v1","10.0",""],["z","1.0","1.0","v1","","11.0"]]'
    text = format_rows("99-1", {b"at": b"12.5", b"rows": rows}, skip_through=-1, now=13.0)
    lines = text.splitlines()
    assert lines[0] == '"x,""y""",1.5,2.0,0.5,v1,10.000000,12.500000,13.000000,99-1:0'
    assert lines[1].endswith(",11.000000,12.500000,13.000000,99-1:1")
    again = format_rows("99-1", {b"at": b"12.5", b"rows": rows}, skip_through=0, now=13.0)
    assert again.splitlines() == lines[1:]


def _log_with_rows(path: Path, ids: list[str]) -> list[bytes]:
    """A log as the sink writes it; returns each row's bytes."""
    rows = orjson.dumps([[i, "1.5", "2.0", "v1", "", ""] for i in ids])
    text = format_rows("1700-0", {b"at": b"12.5", b"rows": rows}, skip_through=-1, now=13.0)
    lines = [line.encode() + b"\n" for line in text.splitlines()]
    path.write_bytes(HEAD.encode() + b"".join(lines))
    return lines


def test_recovery_is_right_for_a_tail_cut_at_any_byte(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    ids = ["plain", 'a,"quoted",id', "ünïcødé ✓", "=1+2", " spaced "]
    lines = _log_with_rows(path, ids)
    whole = path.read_bytes()
    head = len(HEAD.encode())
    for cut in range(head, len(whole) + 1):
        path.write_bytes(whole[:cut])
        f, pos = recover(path)
        f.close()
        complete = 0
        while complete < len(lines) and head + sum(map(len, lines[:complete + 1])) <= cut:
            complete += 1
        assert pos == (("1700-0", complete - 1) if complete else None), cut
        assert path.read_bytes() == whole[:head + sum(map(len, lines[:complete]))], cut
    with path.open(newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ids


def test_a_line_the_sink_did_not_write_stops_recovery_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEAD + "someone,else's,line\n")
    with pytest.raises(ForeignLog, match="not a row of this log"):
        recover(path)


class _FullDisk(io.FileIO):
    """A file on a disk that takes `room` more bytes, then refuses with ENOSPC."""

    room = 10

    def write(self, data: Any) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        return super().write(taken)


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_bytes(b"before\n")
    with _FullDisk(path, "a") as f:
        with pytest.raises(OSError, match="No space"):
            _append(f, b"a row that does not fit\n")
        assert path.read_bytes() == b"before\n"
        f.room = 100
        _append(f, b"a row that fits\n")
    assert path.read_bytes() == b"before\na row that fits\n"
