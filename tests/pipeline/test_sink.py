"""Crash recovery of the CSV sink, on files as a killed process leaves them."""

from __future__ import annotations

from pathlib import Path

from mlpulse.pipeline.sink import HEADER, format_rows, recover

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
