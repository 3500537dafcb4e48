"""History benchmark (issue 12): reports from the Parquet history against a whole-CSV read.

Run from the repository root with the project virtualenv::

    python bench/history.py                          # 50,000,000 rows, about 6 GB of CSV
    python bench/history.py --reuse --out /tmp/bench-history.md
    python bench/history.py --rows 2000000 --workdir /tmp/hb-small

It writes a metric log (`metric_log.csv`, the sink's exact header and row format) of
`--rows` joined predictions spread evenly over the 24 hours before an end time, then
builds the history from it with the real code: `HistoryWriter.flush` on line-aligned pieces
of at most `MAX_FLUSH_BYTES`, and `compact`. `--reuse` keeps what an earlier run left in
the work directory for the same row count.

Each measurement then runs in a fresh interpreter, so that its imports and its peak RSS
are its own. The clock covers the first call only, after the explicit imports (whatever
pyarrow imports lazily on first use falls inside it); the call is then made twice more in
the same process, as a long-running gateway or worker would, for the warm time and the
peak RSS after three calls. pandas runs once, the others `--rounds` times each:

- pandas: the report before the history, `pd.read_csv` of the whole log (the old
  `reports._errors`, copied below), keeping the last hour by `logged_at`;
- the last-hour report: `query.summarize` over the last hour (rows, exact quantiles);
- the same for the hour ending 1 s before the last whole hour, which reads the most: two
  hour partitions, whole;
- a whole-day series at 1-minute steps, from the rollups;
- the whole-day report: `query.summarize` over 24 hours (rollups);
- the last-hour report as the task writes it: `write_report` (figures, JSON and PNG),
  with matplotlib imported beforehand, as in a worker that has drawn a report before;
- the hour ending 1 s before a whole hour again, on a history laid out as the running
  sink leaves it at that moment: that hour still open, in one file per 30-second flush, the
  hour before it compacted.

The old report filters on `logged_at`, the history partitions by `joined_at`. The log is
written so that both name the same rows: a row is logged 2 to 80 ms after it is joined, and
no row is joined in the last 0.1 s before each whole hour counted back from the end.
Figures are checked, and the run fails if one is off: the last-hour reports' count, MAE,
RMSE, max and quantiles against pandas (relative 1e-9), the other windows' against sums
kept while the log was written.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

# The sink's header (`mlpulse.history.layout.LOG_COLUMNS`; checked against it when the log
# is written). The parent process imports neither numpy nor pyarrow: it stays small, so no
# child can start with a peak RSS inherited from it.
HEADER = b"id,y_true,y_pred,absolute_error,model_version,sent_at,joined_at,logged_at,pos\n"
ROWS_PER_ENTRY = 500
DAY = 86400
HOUR = 3600
US = 1_000_000
GAP_US = 100_000          # no row joined in the last 0.1 s before an hour boundary
LAG_US = (2_000, 80_000)  # logged this long after joined
CHUNK_ENTRIES = 2_000     # 1,000,000 rows per generated chunk
VERSIONS = ("v1.4.2", "v1.5.0", "v1.5.1-rc1")
QUANTILES = (0.5, 0.9, 0.95, 0.99)
LIVE_FLUSH_SECONDS = 30.0  # the sink's default `history_flush_seconds`
COMPACT_GRACE = 60.0       # archive.COMPACT_GRACE
ROLLUPS_DIR = "_rollups"   # layout.ROLLUPS
WARM_CALLS = 2             # calls after the first, in the same process

TARGET_SECONDS = 1.0
TARGET_RSS_MB = 300.0

MEASUREMENTS: dict[str, str] = {
    "pandas": "pandas whole-CSV read, last hour (the old report)",
    "last_hour": "last-hour report: `summarize`, rows (exact quantiles)",
    "last_hour_worst": "last-hour report ending 1 s before a whole hour (two whole hours read)",
    "live_last_hour": "the same hour, as the running sink leaves it (open: a file per 30-s "
                      "flush)",
    "report_png": "last-hour `write_report` (figures + JSON + PNG)",
    "day_series": "whole-day series, 1-minute steps, rollups",
    "day_report": "whole-day report: `summarize`, rollups",
}
FAST = [m for m in MEASUREMENTS if m != "pandas"]


def worst_window(end: int) -> tuple[int, int]:
    """The hour ending 1 s before the last whole hour: it lies in two hour partitions, read
    whole, the most rows a last-hour report reads."""
    top = end // HOUR * HOUR - 1
    return top - HOUR, top


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mb(kib: float) -> float:
    return kib * 1024 / 1e6


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def vm_hwm_kib() -> int:
    """This process's own high-water RSS (per address space, never inherited)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --- generating the metric log ------------------------------------------------------


def generate(workdir: Path, rows: int, end: int) -> dict[str, Any]:
    """Write `metric_log.csv`; returns what the checks need (totals, the end time)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from mlpulse.history.layout import LOG_COLUMNS

    assert HEADER.decode().rstrip("\n").split(",") == list(LOG_COLUMNS)
    entries = -(-rows // ROWS_PER_ENTRY)
    hour_us = HOUR * US
    start_us = (end - DAY) * US
    spacing = DAY * US / entries
    squeeze = (hour_us - GAP_US) / hour_us
    if spacing * squeeze < 1_001:
        raise SystemExit(f"{rows:,} rows is more than one outbox entry per millisecond")
    lag_high = int(min(LAG_US[1], spacing * squeeze / 2))
    rng = np.random.default_rng(12)
    path = workdir / "metric_log.csv"
    last_hour_us = (end - HOUR) * US
    totals = {"count": 0, "sum": 0.0, "sumsq": 0.0, "max": 0.0}
    hour_totals = {"count": 0, "sum": 0.0, "sumsq": 0.0, "max": 0.0}
    worst_totals = {"count": 0, "sum": 0.0, "sumsq": 0.0, "max": 0.0}
    worst_since_us, worst_until_us = (x * US for x in worst_window(end))
    write_options = pacsv.WriteOptions(include_header=False, quoting_style="none",
                                       batch_size=1 << 20)

    def times(us: Any) -> pa.Array:
        """`%.6f` of seconds, as the sink writes its times."""
        sec = pc.cast(pa.array(us // US), pa.string())
        frac = pc.utf8_lpad(pc.cast(pa.array(us % US), pa.string()), 6, "0")
        return pc.binary_join_element_wise(sec, frac, ".")

    began = time.perf_counter()
    written = 0
    with path.open("wb") as out:
        out.write(HEADER)
        for e0 in range(0, entries, CHUNK_ENTRIES):
            e1 = min(entries, e0 + CHUNK_ENTRIES)
            k = np.arange(e0, e1, dtype=np.int64)
            r = k * spacing
            hour = np.floor(r / hour_us)
            joined_us = start_us + (hour * hour_us + np.floor(
                (r - hour * hour_us) * squeeze)).astype(np.int64)
            logged_us = joined_us + rng.integers(LAG_US[0], lag_high, e1 - e0)
            entry_ms = joined_us // 1000
            g = np.arange(e0 * ROWS_PER_ENTRY, min(e1 * ROWS_PER_ENTRY, rows), dtype=np.int64)
            n = len(g)
            row_entry = g // ROWS_PER_ENTRY - e0
            local = pa.array(row_entry)
            index = g % ROWS_PER_ENTRY
            y_true = np.round(rng.normal(500.0, 150.0, n), 2)
            y_pred = np.round(y_true + rng.normal(0.0, 55.0, n), 2)
            error = np.abs(y_true - y_pred)
            # A rollout over the day: the new version takes over, a candidate appears late.
            joined_row_us = joined_us[row_entry]
            frac_day = (joined_row_us - start_us) / (DAY * US)
            u = rng.random(n)
            version = np.where(u < 0.9 - 0.8 * frac_day, 0,
                               np.where(u < 0.97 - 0.1 * frac_day, 1, 2)).astype(np.int32)
            sent_us = joined_row_us - rng.integers(5_000, 2 * US, n)
            prefix = pc.binary_join_element_wise(
                pc.cast(pa.array(entry_ms), pa.string()), "0", "-")
            table = pa.table({
                "id": pc.binary_join_element_wise("req", pc.cast(pa.array(g), pa.string()),
                                                  "-"),
                "y_true": y_true,
                "y_pred": y_pred,
                "absolute_error": error,
                "model_version": pa.DictionaryArray.from_arrays(
                    pa.array(version), pa.array(VERSIONS)).cast(pa.string()),
                "sent_at": times(sent_us),
                "joined_at": times(joined_us).take(local),
                "logged_at": times(logged_us).take(local),
                "pos": pc.binary_join_element_wise(
                    prefix.take(local), pc.cast(pa.array(index), pa.string()), ":"),
            })
            pacsv.write_csv(table, out, write_options)
            for into, keep in ((totals, slice(None)),
                               (hour_totals, joined_row_us >= last_hour_us),
                               (worst_totals, (joined_row_us >= worst_since_us)
                                & (joined_row_us < worst_until_us))):
                part = error[keep]
                if part.size:
                    into["count"] += int(part.size)
                    into["sum"] += float(part.sum())
                    into["sumsq"] += float((part * part).sum())
                    into["max"] = max(into["max"], float(part.max()))
            written += n
            elapsed = time.perf_counter() - began
            log(f"generate: {written:,} / {rows:,} rows, {written / elapsed:,.0f} rows/s, "
                f"{out.tell() / 1e9:.2f} GB")
    seconds = time.perf_counter() - began
    check_log(path, rows)
    return {"rows": rows, "end": end, "generate_seconds": seconds, "totals": totals,
            "hour_totals": hour_totals, "worst_totals": worst_totals,
            "csv_bytes": path.stat().st_size}


def check_log(path: Path, rows: int) -> None:
    """The first and last lines look like the sink's: a header, floats, positions in order."""
    import csv

    from mlpulse.history.layout import parse_pos

    with path.open("rb") as f:
        head = [f.readline() for _ in range(1002)]
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        tail = f.read().split(b"\n")[1:-1]
    assert head[0] == HEADER, head[0]
    lines = [b.decode() for b in head[1:]] + [b.decode() for b in tail]
    last = None
    for row in csv.reader(lines):
        assert len(row) == 9, row
        assert '"' not in ",".join(row), row
        assert abs(float(row[1]) - float(row[2])) == float(row[3]), row
        assert float(row[6]) < float(row[7]), row
        pos = parse_pos(row[8])
        assert pos is not None, row
        assert pos[1] == 0, row
        if last is not None and pos[0] >= last[0]:
            assert pos > last, (pos, last)
        last = pos
    assert tail[-1].decode().rsplit(":", 1)[1] == str((rows - 1) % ROWS_PER_ENTRY)


# --- building the history with the real writer ----------------------------------------


def build(workdir: Path) -> dict[str, Any]:
    from mlpulse.history.writer import MAX_FLUSH_BYTES, HistoryWriter

    meta = read_meta(workdir)
    root = workdir / "history"
    shutil.rmtree(root, ignore_errors=True)
    writer = HistoryWriter(root)
    total = meta["csv_bytes"]
    began = time.perf_counter()
    flushes = 0
    with (workdir / "metric_log.csv").open("rb") as f:
        offset = writer.recover(f)
        carry = b""
        while True:
            data = carry + os.pread(f.fileno(), MAX_FLUSH_BYTES - len(carry), offset)
            offset += len(data) - len(carry)
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                assert not data, "the log ends inside a line"
                break
            writer.flush(data[:cut])
            carry = data[cut:]
            flushes += 1
            if flushes % 10 == 0:
                done = offset - len(carry)
                elapsed = time.perf_counter() - began
                log(f"history: {done / total:6.1%} of the log, {flushes} flushes, "
                    f"{done / elapsed / 1e6:,.1f} MB/s, "
                    f"~{meta['rows'] * done / total / elapsed:,.0f} rows/s")
    flushed = time.perf_counter()
    log(f"history: {flushes} flushes in {flushed - began:.1f} s; compacting")
    merged = writer.compact(closed_before=meta["end"] + HOUR)
    compacted = time.perf_counter()
    log(f"history: {merged} hour(s) compacted in {compacted - flushed:.1f} s")
    return {"flushes": flushes, "flush_seconds": flushed - began,
            "compact_seconds": compacted - flushed, "hours_compacted": merged}


def line_at(f: Any, offset: int) -> tuple[int, bytes]:
    """The first whole line starting at or after `offset`, and where it starts."""
    if offset:
        f.seek(offset - 1)
        f.readline()
    else:
        f.seek(0)
    start = f.tell()
    return start, f.readline()


def first_joined_at_or_after(f: Any, size: int, when: float) -> int:
    """Where the first line joined at or after `when` starts (the log is in joined order)."""
    lo, hi = len(HEADER), size
    while lo < hi:
        mid = (lo + hi) // 2
        _, line = line_at(f, mid)
        if not line or float(line.split(b",")[6]) >= when:
            hi = mid
        else:
            lo = mid + 1
    return line_at(f, lo)[0]


def build_live(workdir: Path) -> dict[str, Any]:
    """The hours the worst last-hour window reads, as the running sink leaves them at its
    end (1 s before a whole hour): a flush every 30 s of `logged_at`, then upkeep's
    compaction, which closes the hour before; the hour the window ends in stays open, in
    one file per flush."""
    import numpy as np
    import pyarrow.csv as pacsv

    from mlpulse.history.layout import LOG_COLUMNS, partition_name
    from mlpulse.history.writer import MAX_FLUSH_BYTES, HistoryWriter

    meta = read_meta(workdir)
    top = worst_window(meta["end"])[1]
    root = workdir / "history-live"
    shutil.rmtree(root, ignore_errors=True)
    with (workdir / "metric_log.csv").open("rb") as f:
        start = first_joined_at_or_after(f, meta["csv_bytes"], (top - HOUR) // HOUR * HOUR)
        stop = first_joined_at_or_after(f, meta["csv_bytes"], top)
        data = os.pread(f.fileno(), stop - start, start)
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
    logged = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=list(LOG_COLUMNS)),
        convert_options=pacsv.ConvertOptions(include_columns=["logged_at"]),
    ).column("logged_at").to_numpy()
    assert len(logged) == len(ends)
    tick = np.floor(logged / LIVE_FLUSH_SECONDS)
    cuts = np.r_[np.flatnonzero(tick[1:] != tick[:-1]), len(tick) - 1]
    writer = HistoryWriter(root)
    began = time.perf_counter()
    prev = 0
    for i in cuts:
        piece = data[prev:ends[i]]
        assert len(piece) <= MAX_FLUSH_BYTES
        writer.flush(piece)
        prev = int(ends[i])
    writer.compact(closed_before=top - LIVE_FLUSH_SECONDS - COMPACT_GRACE)
    seconds = time.perf_counter() - began
    files = len(list((root / partition_name(top // HOUR)).glob("*.parquet")))
    log(f"live history: {len(cuts)} flushes of {len(ends):,} rows in {seconds:.1f} s; "
        f"{files} files in the open hour")
    return {"live_rows": len(ends), "live_flushes": len(cuts), "live_seconds": seconds,
            "live_open_hour_files": files}


# --- the measurements (each in a child process) ---------------------------------------


def old_errors(metric_log: Path, since: float | None, until: float | None,
               model_version: str | None) -> Any:
    """`reports._errors` as it was at 469d801: the whole CSV through pandas."""
    import numpy as np
    import pandas as pd

    if not metric_log.exists():
        return np.empty(0)
    frame = pd.read_csv(metric_log, usecols=["absolute_error", "model_version", "logged_at"],
                        dtype={"absolute_error": np.float64, "model_version": str,
                               "logged_at": np.float64})
    keep = np.ones(len(frame), dtype=bool)
    if since is not None:
        keep &= frame["logged_at"].to_numpy() >= since
    if until is not None:
        keep &= frame["logged_at"].to_numpy() < until
    if model_version:
        keep &= (frame["model_version"] == model_version).to_numpy()
    return np.asarray(frame["absolute_error"].to_numpy()[keep], dtype=np.float64)


def old_summary(errors: Any) -> dict[str, Any]:
    """The figures of the old `write_report`."""
    import numpy as np

    out: dict[str, Any] = {"count": int(errors.size)}
    if errors.size:
        out.update(mae=float(errors.mean()), rmse=float(math.sqrt(float((errors ** 2).mean()))),
                   max=float(errors.max()),
                   quantiles={f"p{round(q * 100)}": float(np.quantile(errors, q))
                              for q in QUANTILES})
    return out


def summary_doc(found: Any) -> dict[str, Any]:
    return {"count": found.count, "mae": found.mae, "rmse": found.rmse, "max": found.max,
            "quantiles": found.quantiles, "exact": found.exact, "skipped": len(found.skipped)}


def child(name: str, workdir: Path) -> dict[str, Any]:
    """One measurement; runs in its own interpreter. The first call is the measurement;
    the history's are then repeated, as a long-running worker or gateway would."""
    started = time.perf_counter()
    meta = read_meta(workdir)
    end = float(meta["end"])
    history = workdir / "history"
    if name == "pandas":
        import numpy  # noqa: F401
        import pandas  # noqa: F401
    else:
        from mlpulse.history import query
        if name == "report_png":
            from matplotlib import pyplot  # noqa: F401

            from mlpulse.tasks.reports import write_report
    imports = time.perf_counter() - started
    rss_imports = peak_kib()
    pandas_before = "pandas" in sys.modules

    def once() -> dict[str, Any]:
        if name == "pandas":
            return old_summary(old_errors(workdir / "metric_log.csv", end - HOUR, end, None))
        if name == "last_hour":
            return summary_doc(query.summarize(history, end - HOUR, end, None))
        if name == "last_hour_worst":
            since, until = worst_window(int(end))
            return summary_doc(query.summarize(history, since, until, None))
        if name == "live_last_hour":
            since, until = worst_window(int(end))
            return summary_doc(query.summarize(workdir / "history-live", since, until, None))
        if name == "day_report":
            return summary_doc(query.summarize(history, end - DAY, end, None))
        if name == "day_series":
            got = query.series(history, end - DAY, end, step=60, source="rollups")
            points = got["series"]
            return {"points": len(points), "step": got["step"],
                    "count": sum(p["count"] for p in points),
                    "sum": sum(p["mae"] * p["count"] for p in points),
                    "max": max(p["max"] for p in points), "complete": got["complete"]}
        if name == "report_png":
            doc: dict[str, Any] = write_report(history, workdir / "reports", "last-hour",
                                               end - HOUR, end, None)["summary"]
            doc["png_bytes"] = (workdir / "reports" / "last-hour.png").stat().st_size
            return doc
        raise SystemExit(f"no measurement {name!r}")

    windows = {"last_hour": (history, end - HOUR, end),
               "last_hour_worst": (history, *worst_window(int(end))),
               "report_png": (history, end - HOUR, end),
               "live_last_hour": (workdir / "history-live", *worst_window(int(end))),
               "day_report": (history / ROLLUPS_DIR, end - DAY, end),
               "day_series": (history / ROLLUPS_DIR, end - DAY, end)}
    t0 = time.perf_counter()
    result = once()
    seconds = time.perf_counter() - t0
    rss_first, hwm_first = peak_kib(), vm_hwm_kib()
    warm = []
    for _ in range(0 if name == "pandas" else WARM_CALLS):
        t0 = time.perf_counter()
        once()
        warm.append(time.perf_counter() - t0)
    if name in windows:
        from mlpulse.history.layout import files, partitions

        base, since, until = windows[name]
        result["files_read"] = sum(len(files(p.path)[0])
                                   for p in partitions(base, since, until))
    return {"name": name, "seconds": seconds, "warm_seconds": warm,
            "imports_seconds": imports, "rss_imports_kib": rss_imports,
            "rss_peak_kib": rss_first, "vm_hwm_kib": hwm_first,
            "rss_peak_all_kib": peak_kib(),
            "pandas_imported_by_call": not pandas_before and "pandas" in sys.modules,
            "result": result}


# --- the parent -----------------------------------------------------------------------


def read_meta(workdir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((workdir / "meta.json").read_text())
    return doc


def write_meta(workdir: Path, doc: dict[str, Any]) -> None:
    tmp = workdir / ".meta.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, workdir / "meta.json")


def run_child(args: list[str]) -> dict[str, Any]:
    """Run this script in a fresh interpreter; its stdout's last line is JSON."""
    proc = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed with exit code {proc.returncode}")
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare(workdir: Path, rows: int, reuse: bool, end: int | None) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    if reuse and (workdir / "meta.json").exists():
        meta = read_meta(workdir)
        if meta.get("rows") == rows and meta.get("complete"):
            log(f"reusing the log and history in {workdir} ({rows:,} rows, generated "
                f"{meta['generated']})")
            return meta
        log("--reuse: no complete data for this row count in the work directory; "
            "generating")
    for name in ("meta.json", "metric_log.csv", "history", "history-live", "reports"):
        target = workdir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    end = int(time.time()) if end is None else end
    meta = run_child(["--child", "generate", "--workdir", str(workdir), "--rows", str(rows),
                      "--end", str(end)])
    meta["generated"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_meta(workdir, meta)
    meta.update(run_child(["--child", "build", "--workdir", str(workdir)]))
    write_meta(workdir, meta)
    meta.update(run_child(["--child", "build_live", "--workdir", str(workdir)]))
    meta["complete"] = True
    write_meta(workdir, meta)
    return meta


def sizes(workdir: Path) -> dict[str, int]:
    history, rollups = workdir / "history", workdir / "history" / ROLLUPS_DIR
    return {"history_bytes": du(history) - du(rollups), "rollup_bytes": du(rollups),
            "history_files": sum(1 for _ in history.rglob("*.parquet"))
            - sum(1 for _ in rollups.rglob("*.parquet")),
            "rollup_files": sum(1 for _ in rollups.rglob("*.parquet"))}


def close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel)


def against(name: str, got: dict[str, Any], totals: dict[str, Any]) -> list[str]:
    """Count, MAE, RMSE and max against the ones summed while the log was written."""
    if got["count"] != totals["count"]:
        return [f"{name}: count {got['count']} != direct {totals['count']}"]
    return [f"{name}: {key} {got[key]!r} != direct {want!r}"
            for key, want in (("mae", totals["sum"] / totals["count"]),
                              ("rmse", math.sqrt(totals["sumsq"] / totals["count"])),
                              ("max", totals["max"]))
            if not close(got[key], want)]


def check(meta: dict[str, Any], best: dict[str, dict[str, Any]]) -> list[str]:
    """What does not agree; empty when every figure matches its reference."""
    bad: list[str] = []
    ref = best["pandas"]["result"]
    hour = meta["hour_totals"]
    if ref["count"] != hour["count"] or not close(ref["mae"], hour["sum"] / hour["count"]):
        bad.append(f"pandas last hour {ref['count']} rows, generated {hour['count']}")
    for name in ("last_hour", "report_png"):
        got = best[name]["result"]
        for key in ("mae", "rmse", "max"):
            if not close(got[key], ref[key]):
                bad.append(f"{name}: {key} {got[key]!r} != pandas {ref[key]!r}")
        if got["count"] != ref["count"]:
            bad.append(f"{name}: count {got['count']} != pandas {ref['count']}")
        quantiles = got["quantiles"] if "quantiles" in got and isinstance(
            got["quantiles"], dict) else {k: got[k] for k in ref["quantiles"]}
        for key, value in ref["quantiles"].items():
            if not close(quantiles[key], value):
                bad.append(f"{name}: {key} {quantiles[key]!r} != pandas {value!r}")
    for name in ("last_hour_worst", "live_last_hour"):
        bad += against(name, best[name]["result"], meta["worst_totals"])
    whole = meta["totals"]
    bad += against("day_report", best["day_report"]["result"], whole)
    series = best["day_series"]["result"]
    if series["count"] != whole["count"] or not close(series["max"], whole["max"]) or \
            not close(series["sum"], whole["sum"], 1e-6) or series["step"] != 60:
        bad.append(f"day_series: {series} against {whole}")
    return bad


def ratio(a: float, b: float) -> str:
    r = a / b
    return f"{r:,.0f}x" if r >= 100 else f"{r:,.1f}x" if r >= 10 else f"{r:,.2f}x"


def check_all(meta: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
              rounds: int) -> list[str]:
    """Every round's figures against the one pandas run, and both peak-RSS readings."""
    problems: list[str] = []
    for i in range(rounds):
        for problem in check(meta, {name: got[min(i, len(got) - 1)]
                                    for name, got in runs.items()}):
            if problem not in problems:
                problems.append(problem)
    for name, got in runs.items():
        for g in got:
            if abs(g["rss_peak_kib"] - g["vm_hwm_kib"]) > 10_240:
                problems.append(f"{name}: ru_maxrss {g['rss_peak_kib']} KiB and VmHWM "
                                f"{g['vm_hwm_kib']} KiB disagree")
    return problems


def table(meta: dict[str, Any], runs: dict[str, list[dict[str, Any]]], rounds: int) -> str:
    ref = runs["pandas"][0]
    ref_s, ref_rss = ref["seconds"], mb(ref["rss_peak_kib"])
    rows = meta["rows"]
    lines = [
        f"| measurement | rows in range (files read) | first call s, median of {rounds} (min-max) "
        f"| warm call s, median of {rounds * WARM_CALLS} "
        "| RSS MB: after imports / peak of first call / peak after "
        f"{1 + WARM_CALLS} calls | time ratio (pandas ÷ this) | RSS ratio (pandas ÷ this) "
        "| target | met |",
        "|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    targets = {"last_hour": (TARGET_SECONDS, TARGET_RSS_MB),
               "last_hour_worst": (TARGET_SECONDS, TARGET_RSS_MB),
               "report_png": (TARGET_SECONDS, TARGET_RSS_MB),
               "live_last_hour": (TARGET_SECONDS, TARGET_RSS_MB),
               "day_series": (TARGET_SECONDS, None)}
    for name, label in MEASUREMENTS.items():
        got = runs[name]
        times = [g["seconds"] for g in got]
        secs = statistics.median(times)
        warm = [w for g in got for w in g["warm_seconds"]]
        rss = max(mb(g["rss_peak_kib"]) for g in got)
        rss_all = max(mb(g["rss_peak_all_kib"]) for g in got)
        base = max(mb(g["rss_imports_kib"]) for g in got)
        count = got[0]["result"]["count"]
        read = got[0]["result"].get("files_read")
        where = f"{count:,} of {rows:,}" + (f" ({read} files)" if read is not None else
                                             " (the CSV)")
        memory = f"{base:,.0f} / {rss:,.0f} / {rss_all:,.0f}"
        if name == "pandas":
            ratio_t = ratio_r = "1x"
            target, met = "—", "—"
            first = f"{secs:,.2f} (1 run)"
            memory = f"{base:,.0f} / {rss:,.0f} / —"
        else:
            ratio_t = f"{ratio(ref_s, secs)} faster"
            ratio_r = ratio(ref_rss, rss)
            first = f"{secs:.3f} ({min(times):.3f}-{max(times):.3f})"
            limit = targets.get(name)
            if limit is None:
                target, met = "none set", "—"
            else:
                target = f"≤ {limit[0]:g} s" + (f", ≤ {limit[1]:g} MB" if limit[1] else "")
                ok = secs <= limit[0] and (limit[1] is None or rss <= limit[1])
                met = "yes" if ok else "**no**"
        hot = f"{statistics.median(warm):.3f}" if warm else "—"
        lines.append(f"| {label} | {where} | {first} | {hot} | {memory} "
                     f"| {ratio_t} | {ratio_r} | {target} | {met} |")
    gb = 1e9
    data = [
        "",
        "| data | size | built in | rate |",
        "|---|--:|--:|--:|",
        f"| metric log CSV, {rows:,} rows | {meta['csv_bytes'] / gb:,.2f} GB "
        f"| {meta['generate_seconds']:,.1f} s (generation) "
        f"| {rows / meta['generate_seconds']:,.0f} rows/s |",
        f"| history rows (Parquet, zstd), {meta['history_files']:,} files "
        f"| {meta['history_bytes'] / gb:,.2f} GB "
        f"| {meta['flush_seconds']:,.1f} s ({meta['flushes']} flushes) "
        f"| {rows / meta['flush_seconds']:,.0f} rows/s |",
        f"| rollups (per minute, version, bin), {meta['rollup_files']:,} files "
        f"| {meta['rollup_bytes'] / 1e6:,.1f} MB "
        f"| {meta['compact_seconds']:,.1f} s (compacting {meta['hours_compacted']} partitions, "
        "rows and rollups) | — |",
        f"| running layout of the hours that hour touches: {meta['live_rows']:,} rows "
        f"| {meta['live_open_hour_files']} files in the open hour "
        f"| {meta['live_seconds']:,.1f} s ({meta['live_flushes']} flushes) | — |",
    ]
    return "\n".join(lines + data) + "\n"


def measure(workdir: Path, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """pandas once (it takes seconds and gigabytes), then `rounds` of the rest, each
    measurement in a fresh process, the rounds interleaved."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in MEASUREMENTS}
    log("measuring: pandas whole-CSV read (one run)")
    runs["pandas"].append(run_child(["--child", "pandas", "--workdir", str(workdir)]))
    log(f"  {runs['pandas'][0]['seconds']:.1f} s")
    for r in range(rounds):
        for name in FAST:
            got = run_child(["--child", name, "--workdir", str(workdir)])
            runs[name].append(got)
            log(f"round {r + 1}: {name}: {got['seconds']:.3f} s, "
                f"peak RSS {mb(got['rss_peak_kib']):.0f} MB "
                f"(VmHWM {mb(got['vm_hwm_kib']):.0f} MB), warm "
                f"{', '.join(f'{w:.3f}' for w in got['warm_seconds'])} s, peak after "
                f"{mb(got['rss_peak_all_kib']):.0f} MB")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mlpulse-history-bench"))
    ap.add_argument("--reuse", action="store_true",
                    help="keep the log and history the work directory has for --rows")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("--rounds", type=int, default=3,
                    help="fresh processes per fast measurement (the median is reported)")
    ap.add_argument("--end", type=int, help="end of the generated day (default: now)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir.resolve()

    if args.child:
        if args.child == "generate":
            doc = generate(workdir, args.rows, args.end)
        elif args.child == "build":
            doc = build(workdir)
        elif args.child == "build_live":
            doc = build_live(workdir)
        else:
            doc = child(args.child, workdir)
        print(json.dumps(doc))
        return

    if REPO_ROOT in workdir.parents or workdir == REPO_ROOT:
        raise SystemExit("--workdir must be outside the repository")
    meta = prepare(workdir, args.rows, args.reuse, args.end)
    meta.update(sizes(workdir))
    runs = measure(workdir, args.rounds)
    problems = check_all(meta, runs, args.rounds)
    out = table(meta, runs, args.rounds)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    end = datetime.datetime.fromtimestamp(meta["end"], datetime.UTC)
    head = (f"- date: {when}; data generated {meta['generated']}, end time {meta['end']} "
            f"({end:%H:%M:%S} UTC, {end.minute} min into its hour)\n"
            f"- machine: nproc={os.cpu_count()}, {platform.machine()}, "
            f"Linux {platform.release()}, Python {platform.python_version()}\n"
            f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`\n"
            f"- workdir: {workdir}\n\n")
    lazy = [name for name, got in runs.items() if any(g["pandas_imported_by_call"] for g in got)]
    if lazy:
        out += ("\npyarrow imported pandas during the first call of: "
                + ", ".join(lazy) + "\n")
    text = head + out + ("\nchecks: every figure matches its reference\n" if not problems
                         else "\nCHECKS FAILED:\n" + "\n".join(f"- {p}" for p in problems)
                         + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    if problems:
        raise SystemExit("the history's figures do not match the reference: "
                         + "; ".join(problems))


if __name__ == "__main__":
    main()
