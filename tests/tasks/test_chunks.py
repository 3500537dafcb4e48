"""How an upload is cut into chunks: whole lines, blank lines skipped, rows numbered."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlpulse.tasks import jobs


@pytest.mark.parametrize(("text", "pieces"), [
    ("a,b\n1,2\n3,4\n", [b"1,2\n", b"3,4\n"]),
    ("a,b\n1,2\n3,4", [b"1,2\n", b"3,4"]),  # no newline at the end
    ("a,b\r\n1,2\r\n\r\n3,4\r\n", [b"1,2\r\n", b"3,4\r\n"]),
    ("a,b\n\n1,2\n\n", [b"1,2\n"]),
    ("a,b\n", []),
    ("", []),
])
def test_chunks_hold_whole_data_lines(tmp_path: Path, text: str, pieces: list[bytes]) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(text.encode())
    bounds = jobs.chunk_bounds(path, 1)
    data = path.read_bytes()
    assert [data[start:end] for start, end, _, _ in bounds] == pieces
    assert [first for _, _, first, _ in bounds] == list(range(1, len(pieces) + 1))


def test_chunks_span_scan_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "SCAN_BLOCK", 7)  # line ends fall across block edges
    rows = [f"{i},{i * 3}" for i in range(1, 101)]
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n" + "\n".join(rows) + "\n")
    bounds = jobs.chunk_bounds(path, 30)
    assert [(first, n) for _, _, first, n in bounds] == [(1, 30), (31, 30), (61, 30), (91, 10)]
    data = path.read_bytes()
    assert b"".join(data[s:e] for s, e, _, _ in bounds).decode().split() == rows
