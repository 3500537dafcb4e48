"""End-to-end pipeline benchmark: the seed-style baseline, a lean reference and mlpulse.

Run from the repository root with the project virtualenv::

    python bench/pipeline.py                  # full fixed workloads
    python bench/pipeline.py --quick          # counts / 10, steady phase 5 s
    python bench/pipeline.py --only baseline  # one system only (baseline, lean, mlpulse)
    python bench/pipeline.py --drift on       # mlpulse phases with drift counting only
    python bench/pipeline.py --rounds 3       # drift off/on pairs three times, median ratio
    python bench/pipeline.py --drift on --history both  # history off/on pairs instead
    python bench/pipeline.py --out bench/results.md

Every phase runs against a dedicated RabbitMQ vhost (``mlpulse-bench``) whose queues are
deleted first, a flushed Redis DB 14 and a fresh temporary directory. Figures are taken from
the metric CSV each system writes: throughput is rows / (last ``logged_at`` - first send) and
latency is ``logged_at`` - send time per row. Peak RSS is sampled every 0.2 s per role
process, children included.

By default the frames-of-500 and single-message workloads each run twice, back to back:
first with the model role's drift counting off (``MLPULSE_DRIFT_ENABLED=false``), then on,
so the report can give the cost of drift under the same machine load. ``--history both``
does the same for the metric role's Parquet history (``MLPULSE_HISTORY_ENABLED``); with
both switches at ``both`` every workload runs all four ways, and each switch is compared
between phases that differ in it alone. History-on phases flush the history every
``--history-flush-seconds`` (1 s) instead of the shipped 30 s, so that a phase of a few
seconds pays for several flushes inside its timed part, as a long run does. Such a phase
ends once the history holds every row, and the report counts the rows of
``<logs>/history/date=*/hour=*/*.parquet`` against the CSV's. Each pair also compares the
CPU seconds of the role the switch adds work to (drift: model, history: metric), taken
from the producer's start until then, which a flush after the last CSV row cannot escape.
After every mlpulse phase the report gives what Redis DB 14 holds: ``used_memory`` minus
its value right after the flush at the phase's start, and the keys left,
``mlpulse:drift:*`` among them.

The lean reference (``bench/lean_reference.py``, issue 14: a producer, a model and a
joiner process doing mlpulse's essential work and no more) runs the frames-of-500 workload
right before mlpulse's in every round, on queues of its own (``lean.*``) in the same vhost
and DB, measured the same way. The report divides each mlpulse frames-of-500 phase's
throughput by the lean phase's of the same round (the bar: at least 0.5x). Only such
same-run ratios mean anything on a shared machine. The lean reference has no phase of
single messages or at a steady rate: one fsync per frame caps it at one frame per fsync,
so with single-event frames it measures the disk, not a pipeline.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pika
import psutil
import pyarrow.parquet as pq
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

from mlpulse.history.layout import files as history_files  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lean_reference  # noqa: E402

BASELINE_DIR = REPO_ROOT / "bench" / "baseline"
VHOST = "mlpulse-bench"
AMQP_URL = f"amqp://guest:guest@localhost:5672/{VHOST}"
REDIS_URL = "redis://localhost:6379/14"
DRIFT_KEYS = "mlpulse:drift:*"
QUEUES = ("features", "y_true", "y_pred", "mlpulse.dead")

POLL_S = 0.2
READY_TIMEOUT_S = 180.0
STALL_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
READY_RE = re.compile(rb"\bready\b", re.IGNORECASE)
MIB = 1024 * 1024

DEFAULT_BASELINE_COUNT = 2_000
DEFAULT_BATCH_COUNT = 100_000
DEFAULT_BATCH_SIZE = 500
DEFAULT_SINGLE_COUNT = 20_000
DEFAULT_STEADY_RATE = 1_000
DEFAULT_STEADY_SECONDS = 30
QUICK_DIVISOR = 10
QUICK_STEADY_SECONDS = 5
DEFAULT_PHASE_TIMEOUT_S = 900.0
# The bar: throughput with drift on is at least this share of it with drift off.
DRIFT_MIN_RATIO = 0.9
# Issue 14's bar: mlpulse's frames-of-500 throughput is at least this share of the lean
# reference's in the same run.
LEAN_MIN_RATIO = 0.5
# History-on phases flush this often (the shipped MLPULSE_HISTORY_FLUSH_SECONDS is 30 s):
# the frames-of-500 phase's timed part lasts 3-5 s and should hold several flushes.
DEFAULT_HISTORY_FLUSH_S = 1.0
SHIPPED_HISTORY_FLUSH_S = 30.0
HISTORY_GLOB = "date=*/hour=*/*.parquet"  # the history's row files, under <logs>/history


@dataclass(frozen=True)
class Switch:
    """A setting the benchmark can run off and on, paired per workload and round."""

    name: str  # the Phase field and the command-line option
    title: str
    setting: str  # the environment variable, "true" or "false"
    role: str  # the role whose work it adds; its CPU seconds are compared off vs on
    bar: float | None = None  # the least on ÷ off throughput ratio the issue accepts
    always_labelled: bool = False  # name its state in phase labels even when not varied


DRIFT = Switch("drift", "Drift", "MLPULSE_DRIFT_ENABLED", "model", DRIFT_MIN_RATIO, True)
HISTORY = Switch("history", "History", "MLPULSE_HISTORY_ENABLED", "metric")
SWITCHES = (DRIFT, HISTORY)
MODES = {"both": (False, True), "on": (True,), "off": (False,)}


@dataclass(frozen=True)
class Phase:
    """One workload: which system runs it and how the producer is driven."""

    key: str
    label: str
    system: str  # "baseline", "lean" (bench/lean_reference.py) or "mlpulse"
    count: int
    batch: int = 1
    rate: float = 0.0
    workload: str = ""  # with `round`, pairs a switch's on phase with its off twin
    drift: bool = True  # the model role's drift counting (MLPULSE_DRIFT_ENABLED)
    history: bool = True  # the metric role's Parquet history (MLPULSE_HISTORY_ENABLED)
    round: int = 1
    history_flush_s: float = DEFAULT_HISTORY_FLUSH_S  # MLPULSE_HISTORY_FLUSH_SECONDS

    def on(self, switch: Switch) -> bool:
        """Whether ``switch`` is on in this phase."""
        return bool(getattr(self, switch.name))

    def variant(self, switch: Switch) -> tuple[str, int, tuple[bool, ...]]:
        """What a phase must share with its twin for ``switch``: the workload, the round and
        every other switch's state."""
        others = tuple(self.on(s) for s in SWITCHES if s is not switch)
        return self.workload, self.round, others


@dataclass(frozen=True)
class HistoryCheck:
    """What the Parquet history under the phase's log dir holds once its roles stopped."""

    rows: int  # rows in the files that count (a compaction's inputs are superseded)
    unique_ids: int
    csv_ids_missing: int  # ids in the CSV the history lacks
    files: int
    flushes: int  # distinct flush positions among the f-files
    flushes_timed: int  # of them, written by the last row's logged_at (the timed part)
    superseded_files: int
    caught_up_s: float | None  # from the last row's logged_at until the history held all


@dataclass(frozen=True)
class RedisUsage:
    """What the benchmark Redis DB holds at the end of a phase."""

    used_mib: float  # INFO used_memory minus its value right after the phase's flush
    keys: int
    key_mib: float  # MEMORY USAGE summed over the DB's keys
    drift_keys: int


@dataclass
class PhaseResult:
    """Figures measured for one phase."""

    phase: Phase
    rows: int = 0
    unique_ids: int = 0
    events_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    producer_s: float | None = None
    redis: RedisUsage | None = None
    history: HistoryCheck | None = None
    history_done_at: float | None = None  # when the history first held every CSV row
    # user + system CPU seconds per consumer role (process tree), from the producer's start
    # until every row was in the CSV and, with the history on, in the history
    cpu_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        """Rows whose id was already seen."""
        return self.rows - self.unique_ids

    @property
    def missing(self) -> int:
        """Requested events with no row at all."""
        return max(self.phase.count - self.unique_ids, 0)


@dataclass
class Role:
    """A running subprocess of the pipeline and the file its output goes to."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path


class RssSampler:
    """Background thread recording the peak RSS (process + children) of each tracked role."""

    def __init__(self, interval_s: float = POLL_S) -> None:
        self._interval_s = interval_s
        self._procs: dict[str, psutil.Process] = {}
        self._peak: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def track(self, name: str, pid: int) -> None:
        """Start sampling the process ``pid`` under ``name``."""
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        with self._lock:
            self._procs[name] = proc
        self._sample()

    def peak_mib(self) -> dict[str, float]:
        """Peak RSS per role in MiB."""
        with self._lock:
            return {name: rss / MIB for name, rss in self._peak.items()}

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            procs = list(self._procs.items())
        for name, proc in procs:
            rss = _tree_rss(proc)
            if rss is None:
                continue
            with self._lock:
                self._peak[name] = max(self._peak.get(name, 0), rss)


def _tree_rss(proc: psutil.Process) -> int | None:
    """RSS of ``proc`` plus all its descendants, or None once it has exited."""
    try:
        total = int(proc.memory_info().rss)
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for child in children:
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


def _tree_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and all its descendants, or None once gone."""
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    total = times.user + times.system
    for child in children:
        try:
            child_times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total += child_times.user + child_times.system
    return total


# --------------------------------------------------------------------------- broker state


def ensure_vhost() -> None:
    """Create the benchmark vhost and grant guest full permissions (idempotent)."""
    if shutil.which("rabbitmqctl") is None:
        print("rabbitmqctl not found; assuming vhost exists", file=sys.stderr)
        return
    commands = (
        ["rabbitmqctl", "add_vhost", VHOST],
        ["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
    )
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        output = done.stdout + done.stderr
        if done.returncode != 0 and not re.search(r"already.exists", output, re.IGNORECASE):
            raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}): {output}")


def reset_broker_state() -> int:
    """Delete the pipeline queues in the vhost and flush the benchmark Redis DB.

    Returns Redis's ``used_memory`` in bytes right after the flush.
    """
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for queue in (*QUEUES, *lean_reference.QUEUES):
            channel.queue_delete(queue=queue)
    finally:
        connection.close()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def measure_redis(used_after_flush: int) -> RedisUsage:
    """Memory and keys of the benchmark Redis DB now, against the flushed state.

    ``used_memory`` covers the whole server, so it moves with any other DB in use; the
    per-key sum covers DB 14 alone (``SAMPLES 0``: every element of a hash is counted).
    """
    client = redis.Redis.from_url(REDIS_URL)
    try:
        used = int(client.info("memory")["used_memory"])
        keys = list(client.scan_iter(count=1000))
        drift_keys = sum(1 for _ in client.scan_iter(match=DRIFT_KEYS, count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        key_bytes = sum(int(size or 0) for size in pipe.execute())
    finally:
        client.close()
    return RedisUsage(
        used_mib=(used - used_after_flush) / MIB,
        keys=len(keys),
        key_mib=key_bytes / MIB,
        drift_keys=drift_keys,
    )


# --------------------------------------------------------------------------- processes


def base_env() -> dict[str, str]:
    """Environment for every subprocess: unbuffered, ``src`` importable, no stray settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLPULSE_", "BASELINE_"))
    }
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_role(name: str, argv: Sequence[str], env: dict[str, str], workdir: Path) -> Role:
    """Start one pipeline process with stdout and stderr going to ``workdir/<name>.log``."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return Role(name=name, proc=proc, log_path=log_path)


def log_tail(role: Role, lines: int = 15) -> str:
    """Last lines of a role's output, for error reports."""
    try:
        text = role.log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def describe_exit(role: Role, what: str) -> str:
    """One-line summary of an unexpected exit; the full output tail goes to stderr."""
    tail = log_tail(role)
    print(f"--- {role.name} output (last lines) ---\n{tail}\n---", file=sys.stderr)
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    return f"{role.name} {what} (code {role.proc.returncode}); last output: {last or '(none)'}"


def wait_ready(role: Role, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Block until the role logs the word ``ready``; raise if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if READY_RE.search(role.log_path.read_bytes()):
            return
        if role.proc.poll() is not None:
            raise RuntimeError(describe_exit(role, "exited before ready"))
        time.sleep(POLL_S)
    raise RuntimeError(describe_exit(role, f"not ready after {timeout_s:.0f} s"))


def stop_role(role: Role) -> str | None:
    """SIGTERM the role and wait; kill it and leftover children if it lingers.

    Returns a note when the role did not shut down cleanly, else None.
    """
    try:
        children = psutil.Process(role.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    note = None
    if role.proc.poll() is None:
        role.proc.send_signal(signal.SIGTERM)
        try:
            role.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            role.proc.kill()
            role.proc.wait()
            note = f"{role.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s and was killed"
    elif role.proc.returncode != 0:
        note = describe_exit(role, "exited early")
    for child in children:
        try:
            if child.is_running():
                child.kill()
        except psutil.NoSuchProcess:
            pass
    return note


# --------------------------------------------------------------------------- metric log


def count_rows(csv_path: Path) -> int:
    """Data rows currently in the CSV (lines minus header); 0 if absent."""
    try:
        data = csv_path.read_bytes()
    except FileNotFoundError:
        return 0
    return max(data.count(b"\n") - 1, 0)


def read_log(csv_path: Path, sent_column: str) -> pd.DataFrame:
    """Load ``id`` (as text), send time and ``logged_at`` from a metric CSV."""
    empty = pd.DataFrame({"id": [], "sent": [], "logged": []})
    try:
        frame = pd.read_csv(csv_path, dtype={"id": str}, on_bad_lines="skip")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return empty
    missing = {"id", sent_column, "logged_at"} - set(frame.columns)
    if missing:
        raise RuntimeError(f"{csv_path.name} lacks columns {sorted(missing)}")
    return pd.DataFrame(
        {
            "id": frame["id"],
            "sent": pd.to_numeric(frame[sent_column], errors="coerce"),
            "logged": pd.to_numeric(frame["logged_at"], errors="coerce"),
        }
    ).dropna(subset=["id"])


def summarise(result: PhaseResult, log: pd.DataFrame, producer_started: float) -> None:
    """Fill rows, unique ids, throughput and latency percentiles from the loaded log."""
    result.rows = len(log)
    result.unique_ids = int(log["id"].nunique())
    timed = log.dropna(subset=["sent", "logged"])
    if timed.empty:
        return
    first_send = float(timed["sent"].min())
    if not first_send > 0:
        first_send = producer_started
    window = float(timed["logged"].max()) - first_send
    if window > 0:
        result.events_per_s = result.rows / window
    latency_ms = (timed["logged"] - timed["sent"]) * 1000.0
    result.p50_ms = float(latency_ms.quantile(0.50))
    result.p99_ms = float(latency_ms.quantile(0.99))


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class PhasePlan:
    """The concrete processes and files of one phase."""

    consumers: list[tuple[str, list[str]]]
    producer: list[str]
    env: dict[str, str]
    csv_path: Path
    sent_column: str
    history_dir: Path | None = None  # where the metric role writes the history, if it does


def plan_phase(phase: Phase, workdir: Path) -> PhasePlan:
    """Build the commands, environment and CSV location for a phase in ``workdir``."""
    python = sys.executable
    env = base_env()
    if phase.system == "baseline":
        csv_path = workdir / "logs" / "metric_log.csv"
        env |= {"BASELINE_AMQP_URL": AMQP_URL, "BASELINE_CSV": str(csv_path)}
        return PhasePlan(
            consumers=[
                ("metric", [python, str(BASELINE_DIR / "metric.py")]),
                ("model", [python, str(BASELINE_DIR / "model.py")]),
            ],
            producer=[
                python,
                str(BASELINE_DIR / "features.py"),
                "--count",
                str(phase.count),
                "--interval",
                "0",
            ],
            env=env,
            csv_path=csv_path,
            sent_column="id",
        )
    if phase.system == "lean":
        csv_path = workdir / "logs" / "metric_log.csv"
        consumers, producer = lean_reference.role_commands(
            python, csv_path, phase.count, phase.batch, phase.rate, AMQP_URL, REDIS_URL
        )
        return PhasePlan(
            consumers=consumers,
            producer=producer,
            env=env,
            csv_path=csv_path,
            sent_column="sent_at",
        )
    dirs = {name: workdir / name for name in ("logs", "data", "models")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env |= {
        "MLPULSE_AMQP_URL": AMQP_URL,
        "MLPULSE_REDIS_URL": REDIS_URL,
        "MLPULSE_LOG_DIR": str(dirs["logs"]),
        "MLPULSE_DATA_DIR": str(dirs["data"]),
        "MLPULSE_MODELS_DIR": str(dirs["models"]),
    }
    env |= {switch.setting: "true" if phase.on(switch) else "false" for switch in SWITCHES}
    if phase.history:
        env["MLPULSE_HISTORY_FLUSH_SECONDS"] = f"{phase.history_flush_s:g}"
    return PhasePlan(
        # The model role trains at first start, so it goes first and must be ready.
        consumers=[
            ("model", [python, "-m", "mlpulse", "model"]),
            ("metric", [python, "-m", "mlpulse", "metric"]),
        ],
        producer=[
            python,
            "-m",
            "mlpulse",
            "produce",
            "--count",
            str(phase.count),
            "--batch",
            str(phase.batch),
            "--rate",
            f"{phase.rate:g}",
        ],
        env=env,
        csv_path=dirs["logs"] / "metric_log.csv",
        sent_column="sent_at",
        # MLPULSE_HISTORY_DIR is stripped by base_env, so the history is under the logs.
        history_dir=dirs["logs"] / "history" if phase.history else None,
    )


def wait_for_rows(
    result: PhaseResult, producer: Role, csv_path: Path, started: float, timeout_s: float
) -> None:
    """Poll until the producer has exited and the CSV holds every event, or it stalls."""
    expected = result.phase.count
    deadline = time.monotonic() + timeout_s
    last_rows = -1
    progress_at = time.monotonic()
    while True:
        rows = count_rows(csv_path)
        now = time.monotonic()
        producer_done = producer.proc.poll() is not None
        if producer_done and result.producer_s is None:
            result.producer_s = time.time() - started
            if producer.proc.returncode != 0:
                result.notes.append(describe_exit(producer, "failed"))
        if rows > last_rows or (not producer_done and rows < expected):
            progress_at = now
        last_rows = rows
        if rows >= expected and producer_done:
            return
        if now - progress_at > STALL_TIMEOUT_S:
            result.notes.append(f"no progress for {STALL_TIMEOUT_S:.0f} s at {rows} rows")
            return
        if now > deadline:
            result.notes.append(f"phase timeout after {timeout_s:.0f} s at {rows} rows")
            return
        time.sleep(POLL_S)


def _history_row_files(history_dir: Path) -> tuple[list[Path], int]:
    """(the row files that count, how many are superseded) under ``history_dir``."""
    counted: list[Path] = []
    superseded = 0
    for partition in sorted({path.parent for path in history_dir.glob(HISTORY_GLOB)}):
        live, stale = history_files(partition)
        counted += live
        superseded += len(stale)
    return counted, superseded


def wait_for_history(history_dir: Path, rows: int, timeout_s: float) -> float | None:
    """Poll until the history holds ``rows`` rows; the time it first did, or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            held = sum(
                pq.read_metadata(path).num_rows for path in _history_row_files(history_dir)[0]
            )
        except (OSError, ValueError):  # a file compacted away between listing and reading
            held = -1
        if held >= rows:
            return time.time()
        time.sleep(POLL_S)
    return None


def check_history(
    history_dir: Path, log: pd.DataFrame, done_at: float | None = None
) -> HistoryCheck:
    """Count the history's rows under ``history_dir`` and the ids of ``log`` it lacks.

    Only the files that count are read (``layout.files``: a compaction's inputs left
    behind are superseded); a flush writes one ``f-<pos>.parquet`` per hour it touches,
    so the distinct names are the flushes, and their mtimes say whether they were written
    in the timed part (up to the last row's ``logged_at``) or by the drain at the stop.
    """
    counted, superseded = _history_row_files(history_dir)
    rows = 0
    ids: set[str] = set()
    for path in counted:
        table = pq.read_table(path, columns=["id"])
        rows += table.num_rows
        ids.update(table.column("id").to_pylist())
    flushed = [path for path in counted if path.name.startswith("f-")]
    timed_end = float(log["logged"].max()) if len(log) else 0.0
    timed = {path.name for path in flushed if path.stat().st_mtime <= timed_end}
    return HistoryCheck(
        rows=rows,
        unique_ids=len(ids),
        csv_ids_missing=len(set(log["id"].astype(str)) - ids),
        files=len(counted),
        flushes=len({path.name for path in flushed}),
        flushes_timed=len(timed),
        superseded_files=superseded,
        caught_up_s=None if done_at is None else max(done_at - timed_end, 0.0),
    )


def run_phase(phase: Phase, timeout_s: float, keep_dirs: bool) -> PhaseResult:
    """Run one phase from clean broker state in a fresh temp dir and measure it."""
    result = PhaseResult(phase=phase)
    workdir = Path(tempfile.mkdtemp(prefix=f"mlpulse-bench-{phase.key}-"))
    roles: list[Role] = []
    plan = plan_phase(phase, workdir)
    before_stop = pd.DataFrame({"id": [], "sent": [], "logged": []})
    producer_started = time.time()
    print(f"[{phase.key}] {phase.label}: starting in {workdir}", file=sys.stderr)
    try:
        used_after_flush = reset_broker_state()
        with RssSampler() as sampler:
            try:
                for name, argv in plan.consumers:
                    role = start_role(name, argv, plan.env, workdir)
                    roles.append(role)
                    sampler.track(name, role.proc.pid)
                    wait_ready(role)
                cpu_at_start = {role.name: _tree_cpu(role.proc.pid) for role in roles}
                producer_started = time.time()
                producer = start_role("producer", plan.producer, plan.env, workdir)
                roles.append(producer)
                sampler.track("producer", producer.proc.pid)
                wait_for_rows(result, producer, plan.csv_path, producer_started, timeout_s)
                before_stop = read_log(plan.csv_path, plan.sent_column)
                if plan.history_dir is not None and not result.notes:
                    # The history follows the log by up to a flush interval: the phase's
                    # work is done once it holds every row, and only then is the CPU read.
                    result.history_done_at = wait_for_history(
                        plan.history_dir,
                        len(before_stop),
                        3 * phase.history_flush_s + STALL_TIMEOUT_S,
                    )
                for role in roles:
                    start_cpu, end_cpu = cpu_at_start.get(role.name), _tree_cpu(role.proc.pid)
                    if start_cpu is not None and end_cpu is not None:
                        result.cpu_s[role.name] = end_cpu - start_cpu
            finally:
                for role in reversed(roles):
                    note = stop_role(role)
                    if note and role.name != "producer":
                        result.notes.append(note)
            result.peak_rss_mib = sampler.peak_mib()
        if phase.system == "mlpulse":
            # Once the roles have stopped: every event is in, and their connections' buffers
            # no longer count.
            result.redis = measure_redis(used_after_flush)
        # A role may flush on shutdown, or be stopped mid-rewrite; keep the fuller read.
        after_stop = read_log(plan.csv_path, plan.sent_column)
        log = after_stop if len(after_stop) >= len(before_stop) else before_stop
        summarise(result, log, producer_started)
        if plan.history_dir is not None:
            # The roles have stopped, so the sink's last flush (on the drain) is in.
            history = check_history(plan.history_dir, log, result.history_done_at)
            result.history = history
            if history.rows != result.rows or history.csv_ids_missing:
                result.notes.append(
                    f"the history holds {history.rows:,} rows against the CSV's "
                    f"{result.rows:,}, and lacks {history.csv_ids_missing:,} of its ids"
                )
    except Exception as exc:  # one broken phase must not hide the others
        result.notes.append(f"{type(exc).__name__}: {exc}")
        print(f"[{phase.key}] failed: {exc}", file=sys.stderr)
    finally:
        if keep_dirs:
            print(f"[{phase.key}] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    redis_note = (
        ""
        if result.redis is None
        else f", Redis +{result.redis.used_mib:.2f} MiB, {result.redis.drift_keys} drift keys"
    )
    if (history := result.history) is not None:
        redis_note += f", history {history.rows:,} rows in {history.flushes} flushes"
    print(
        f"[{phase.key}] {result.rows}/{phase.count} rows, "
        f"{_fmt(result.events_per_s, 1)} events/s{redis_note}",
        file=sys.stderr,
    )
    return result


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 1) -> str:
    """Format a number with thousands separators, or ``n/a``."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    """Format ``numerator / denominator`` as ``N.NNx``, or ``n/a``."""
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    return f"{numerator / denominator:,.2f}x"


def _total_rss(result: PhaseResult) -> float | None:
    """Sum of the per-role peak RSS figures."""
    return sum(result.peak_rss_mib.values()) if result.peak_rss_mib else None


def nproc() -> str:
    """Processing units available, as ``nproc`` reports them."""
    if shutil.which("nproc"):
        done = subprocess.run(["nproc"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.strip()
    return str(os.cpu_count())


def _baseline_lines(results: list[PhaseResult]) -> list[str]:
    """The table of each mlpulse phase's ratios to the baseline phase."""
    baseline = next((r for r in results if r.phase.system == "baseline"), None)
    mlpulse = [r for r in results if r.phase.system == "mlpulse"]
    if not mlpulse:
        return []
    lines = [
        "",
        "Ratios to the baseline phase (bigger is better in every column):",
        "",
        "| mlpulse phase | events/s (mlpulse / baseline) | p50 latency (baseline / mlpulse) "
        "| p99 latency (baseline / mlpulse) | peak RSS total (baseline / mlpulse) "
        "| exactly N unique ids |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for res in mlpulse:
        exact = (
            "yes"
            if res.unique_ids == res.phase.count and res.duplicates == 0
            else f"no ({res.duplicates:,} dup, {res.missing:,} missing)"
        )
        b = baseline or PhaseResult(phase=res.phase)
        lines.append(
            f"| {res.phase.label} | {_ratio(res.events_per_s, b.events_per_s)} "
            f"| {_ratio(b.p50_ms, res.p50_ms)} | {_ratio(b.p99_ms, res.p99_ms)} "
            f"| {_ratio(_total_rss(b), _total_rss(res))} | {exact} |"
        )
    return lines


def _lean_lines(results: list[PhaseResult]) -> list[str]:
    """Each mlpulse phase's throughput ÷ that of the lean reference phase of the same
    workload and round."""
    lean = {(r.phase.workload, r.phase.round): r for r in results if r.phase.system == "lean"}
    pairs = []
    for res in _mlpulse(results):
        ref = lean.get((res.phase.workload, res.phase.round))
        if ref is not None:
            pairs.append((ref, res))
    if not pairs:
        return []
    lines = [
        "",
        "mlpulse ÷ lean reference, per workload, against the lean phase of the same round "
        f"(the bar: at least {LEAN_MIN_RATIO:.2f}x):",
        "",
        "| mlpulse phase | events/s lean | events/s mlpulse | mlpulse ÷ lean "
        "| p50 ms lean / mlpulse | p99 ms lean / mlpulse "
        "| model + metric CPU s lean / mlpulse | bar met |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    ratios: dict[str, list[float]] = {}
    for ref, res in pairs:
        met = "n/a"
        if res.events_per_s is not None and ref.events_per_s:
            ratio = res.events_per_s / ref.events_per_s
            label = re.sub(r", round \d+$", "", res.phase.label)
            ratios.setdefault(label, []).append(ratio)
            met = "yes" if ratio >= LEAN_MIN_RATIO else "no"
        cpu = " / ".join(_fmt(sum(r.cpu_s.values()) if r.cpu_s else None, 2) for r in (ref, res))
        lines.append(
            f"| {res.phase.label} | {_fmt(ref.events_per_s)} | {_fmt(res.events_per_s)} "
            f"| {_ratio(res.events_per_s, ref.events_per_s)} "
            f"| {_fmt(ref.p50_ms, 2)} / {_fmt(res.p50_ms, 2)} "
            f"| {_fmt(ref.p99_ms, 2)} / {_fmt(res.p99_ms, 2)} | {cpu} | {met} |"
        )
    if any(len(found) > 1 for found in ratios.values()):
        lines += ["", "Median of the rounds' mlpulse ÷ lean ratios:", ""]
        lines += [
            f"- {label}: {statistics.median(found):.2f}x over {len(found)} rounds "
            f"(min {min(found):.2f}x, max {max(found):.2f}x)"
            for label, found in ratios.items()
        ]
    return lines


def _mlpulse(results: list[PhaseResult]) -> list[PhaseResult]:
    return [r for r in results if r.phase.system == "mlpulse"]


def _varied(results: list[PhaseResult], switch: Switch) -> bool:
    """Whether the mlpulse phases ran ``switch`` both ways."""
    return len({r.phase.on(switch) for r in _mlpulse(results)}) > 1


def _pairs(results: list[PhaseResult], switch: Switch) -> list[tuple[PhaseResult, PhaseResult]]:
    """(off, on) results of ``switch`` for the same workload and round, every other switch
    alike, in the order the on phases ran."""
    offs = {r.phase.variant(switch): r for r in _mlpulse(results) if not r.phase.on(switch)}
    pairs = []
    for on in _mlpulse(results):
        off = offs.get(on.phase.variant(switch))
        if on.phase.on(switch) and off is not None:
            pairs.append((off, on))
    return pairs


def _switch_lines(results: list[PhaseResult], switch: Switch) -> list[str]:
    """Per workload (and round) run both ways: throughput with ``switch`` on ÷ off."""
    pairs = _pairs(results, switch)
    if not pairs:
        return []
    name = switch.name
    others = [s for s in SWITCHES if s is not switch and _varied(results, s)]

    def workload(res: PhaseResult) -> str:
        states = [f"{s.name} {'on' if res.phase.on(s) else 'off'}" for s in others]
        return ", ".join([res.phase.workload, *states])

    bar = "no bar set" if switch.bar is None else f"the bar: at least {switch.bar:.2f}x"
    lines = [
        "",
        f"{switch.title} on ÷ {name} off, per workload ({bar}):",
        "",
        f"| workload | round | events/s {name} off | events/s {name} on "
        f"| {name} on ÷ {name} off | p99 ms {name} off / on | {switch.role} CPU s off / on "
        f"| {switch.role} CPU on ÷ off |" + ("" if switch.bar is None else " bar met |"),
        "|---|--:|--:|--:|--:|--:|--:|--:|" + ("" if switch.bar is None else "---|"),
    ]
    ratios: dict[str, list[float]] = {}
    cpu_ratios: dict[str, list[float]] = {}
    for off, on in pairs:
        met = "n/a"
        if on.events_per_s is not None and off.events_per_s:
            ratio = on.events_per_s / off.events_per_s
            ratios.setdefault(workload(on), []).append(ratio)
            if switch.bar is not None:
                met = "yes" if ratio >= switch.bar else "no"
        cpu_off, cpu_on = off.cpu_s.get(switch.role), on.cpu_s.get(switch.role)
        if cpu_on is not None and cpu_off:
            cpu_ratios.setdefault(workload(on), []).append(cpu_on / cpu_off)
        lines.append(
            f"| {workload(on)} | {on.phase.round} | {_fmt(off.events_per_s)} "
            f"| {_fmt(on.events_per_s)} | {_ratio(on.events_per_s, off.events_per_s)} "
            f"| {_fmt(off.p99_ms, 2)} / {_fmt(on.p99_ms, 2)} "
            f"| {_fmt(cpu_off, 2)} / {_fmt(cpu_on, 2)} | {_ratio(cpu_on, cpu_off)} |"
            + ("" if switch.bar is None else f" {met} |")
        )
    if any(len(found) > 1 for found in ratios.values()):
        lines += ["", "Median of the rounds' ratios:", ""]
        for label, found in ratios.items():
            line = (
                f"- {label}: {statistics.median(found):.2f}x over {len(found)} rounds "
                f"(min {min(found):.2f}x, max {max(found):.2f}x)"
            )
            if cpu := cpu_ratios.get(label):
                line += (
                    f"; {switch.role} CPU {statistics.median(cpu):.2f}x "
                    f"(min {min(cpu):.2f}x, max {max(cpu):.2f}x)"
                )
            lines.append(line)
    return lines


def _history_lines(results: list[PhaseResult]) -> list[str]:
    """What the Parquet history held at the end of each history-on phase."""
    checked = [(r, r.history) for r in results if r.history is not None]
    if not checked:
        return []
    lines = [
        "",
        f"The history at the end of each history-on phase (`<logs>/history/{HISTORY_GLOB}`, "
        "read with pyarrow after the roles stopped):",
        "",
        "| mlpulse phase | flush every s | CSV rows | history rows | history unique ids "
        "| CSV ids not in the history | flushes (in the timed part) | files "
        "| all rows in, s after the last CSV row | all rows in |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for res, history in checked:
        whole = history.rows == res.rows and not history.csv_ids_missing
        superseded = (
            f" (+{history.superseded_files} superseded)" if history.superseded_files else ""
        )
        lines.append(
            f"| {res.phase.label} | {res.phase.history_flush_s:g} | {res.rows:,} "
            f"| {history.rows:,} | {history.unique_ids:,} | {history.csv_ids_missing:,} "
            f"| {history.flushes} ({history.flushes_timed}) | {history.files}{superseded} "
            f"| {_fmt(history.caught_up_s, 2)} | {'yes' if whole else 'no'} |"
        )
    return lines


def _redis_lines(results: list[PhaseResult]) -> list[str]:
    """What Redis DB 14 held at the end of each mlpulse phase."""
    measured = [(r, r.redis) for r in results if r.redis is not None]
    if not measured:
        return []
    lines = [
        "",
        "Redis DB 14 at the end of each mlpulse phase, after its roles stopped:",
        "",
        "| mlpulse phase | events | used_memory growth MiB | keys | MEMORY USAGE of the keys MiB "
        "| `mlpulse:drift:*` keys |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for res, usage in measured:
        lines.append(
            f"| {res.phase.label} | {res.phase.count:,} | {_fmt(usage.used_mib, 2)} "
            f"| {usage.keys:,} | {_fmt(usage.key_mib, 2)} | {usage.drift_keys:,} |"
        )
    return lines


def render_report(results: list[PhaseResult], command: str) -> str:
    """Markdown report: header, per-phase table, ratios to the baseline and to the lean
    reference, between each switch's on and off (drift, history), Redis memory, the
    history's rows, and notes."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Pipeline benchmark",
        "",
        f"- date: {now}",
        f"- machine: nproc={nproc()}, {platform.machine()}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}",
        f"- command: `{command}`",
        f"- broker: RabbitMQ vhost `{VHOST}` (queues deleted before each phase), "
        "Redis DB 14 (flushed before each phase), fresh temp dir per phase",
        "",
        "| phase | events | rows | unique ids (dup / missing) | events/s | p50 ms | p99 ms "
        "| peak RSS MiB producer / model / metric | producer s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for res in results:
        rss = " / ".join(
            _fmt(res.peak_rss_mib.get(name), 0) for name in ("producer", "model", "metric")
        )
        ids = f"{res.unique_ids:,} ({res.duplicates:,} / {res.missing:,})"
        lines.append(
            f"| {res.phase.label} | {res.phase.count:,} | {res.rows:,} | {ids} "
            f"| {_fmt(res.events_per_s)} | {_fmt(res.p50_ms, 2)} | {_fmt(res.p99_ms, 2)} "
            f"| {rss} | {_fmt(res.producer_s)} |"
        )

    lines += _baseline_lines(results)
    lines += _lean_lines(results)
    for switch in SWITCHES:
        lines += _switch_lines(results, switch)
    lines += _redis_lines(results)
    lines += _history_lines(results)
    lines += [
        "",
        "events/s = rows / (last `logged_at` - first send); first send is min(`sent_at`) for "
        "mlpulse and the lean reference, and min(`id`) for the baseline (its id is the send "
        "timestamp). Latency is "
        "`logged_at` - send time per CSV row. Peak RSS includes child processes, sampled "
        f"every {POLL_S} s. `producer s` is the producer process wall time. Drift off is "
        "`MLPULSE_DRIFT_ENABLED=false` for every role. used_memory growth is Redis's "
        "`INFO memory` `used_memory` minus its value right after the phase's flush; it covers "
        "the whole server, the MEMORY USAGE sum only DB 14.",
    ]
    flushes = sorted({r.phase.history_flush_s for r in _mlpulse(results) if r.phase.history})
    if _varied(results, HISTORY):
        lines[-1] += " History off is `MLPULSE_HISTORY_ENABLED=false` for every role."
    if flushes:
        every = " / ".join(f"{value:g}" for value in flushes)
        lines[-1] += (
            f" History-on phases flush the history every {every} s "
            f"(`MLPULSE_HISTORY_FLUSH_SECONDS`, shipped default {SHIPPED_HISTORY_FLUSH_S:g} s) "
            "so that a phase of a few seconds pays for several flushes inside its timed part, "
            "as a long run does. Rows reach the CSV in bursts, so a flush may still fall after "
            "the last row's `logged_at`, outside the timed part; the CPU seconds catch it: they "
            "run until the history holds every row."
        )
    if any(r.cpu_s for r in results):
        lines[-1] += (
            " CPU s is user + system time of a role's process tree from the producer's start "
            "until every row is in the CSV and, with the history on, in the history."
        )
    if any(r.phase.system == "lean" for r in results):
        lines[-1] += (
            " The lean reference (`bench/lean_reference.py`) has its own queues (`lean.*`) "
            "and does the essential work only: persistent confirmed frames, one vectorised "
            "predict per frame, an in-process join, and per frame with pairs one CSV write "
            "with these columns, one fsync and one pipelined Redis write of the running "
            "aggregates; no validation, dead-lettering, dedup, drift or history."
        )
    if any(r.phase.rate for r in results):
        lines[-1] += " Paced phases are capped at the offered rate; they are there for latency."
    noted = [r for r in results if r.notes]
    if noted:
        lines += ["", "Notes:", ""]
        lines += [f"- {r.phase.label}: {'; '.join(r.notes)}" for r in noted]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def _key_suffix(states: dict[str, bool]) -> str:
    """``-drift-off``, ``-history-off``, ... for the switches off in a phase."""
    return "".join(f"-{name}-off" for name, on in states.items() if not on)


def _label_suffix(states: dict[str, bool], modes: dict[str, tuple[bool, ...]]) -> str:
    """``, drift on, history off``: each switch that is labelled always, run both ways, or
    off in this phase."""
    return "".join(
        f", {switch.name} {'on' if states[switch.name] else 'off'}"
        for switch in SWITCHES
        if switch.always_labelled or len(modes[switch.name]) > 1 or not states[switch.name]
    )


def build_phases(args: argparse.Namespace) -> list[Phase]:
    """The fixed workloads, scaled down by ``--quick`` unless sizes are given explicitly."""
    divisor = QUICK_DIVISOR if args.quick else 1

    def size(value: int | None, default: int) -> int:
        return value if value is not None else max(default // divisor, 1)

    steady_rate = args.steady_rate
    steady_seconds = args.steady_seconds
    if steady_seconds is None:
        steady_seconds = QUICK_STEADY_SECONDS if args.quick else DEFAULT_STEADY_SECONDS
    batch_size = args.batch_size
    phases = [
        Phase(
            "baseline",
            "baseline (seed-style)",
            "baseline",
            size(args.baseline_count, DEFAULT_BASELINE_COUNT),
        )
    ]
    workloads = (
        (
            "batch",
            f"frames of {batch_size}",
            size(args.batch_count, DEFAULT_BATCH_COUNT),
            batch_size,
        ),
        ("single", "single-message frames", size(args.single_count, DEFAULT_SINGLE_COUNT), 1),
    )
    modes = {switch.name: MODES[getattr(args, switch.name)] for switch in SWITCHES}
    # Every combination of the switches' states: (drift, history, ...) in SWITCHES' order.
    variants = [
        dict(zip(modes, states, strict=True)) for states in itertools.product(*modes.values())
    ]
    for round_no in range(1, args.rounds + 1):
        suffix = f", round {round_no}" if args.rounds > 1 else ""
        for key, workload, count, batch in workloads:
            if key == "batch":
                # The lean reference right before mlpulse, under the same machine load.
                phases.append(
                    Phase(
                        f"lean-{key}{f'-r{round_no}' if suffix else ''}",
                        f"lean reference, {workload}{suffix}",
                        "lean",
                        count,
                        batch=batch,
                        workload=workload,
                        round=round_no,
                    )
                )
            # Off and on back to back, per workload, so the two see the same machine load;
            # every other round the other way round, so neither always goes first.
            ordered = variants if round_no % 2 else variants[::-1]
            phases += [
                Phase(
                    f"{key}{_key_suffix(states)}{f'-r{round_no}' if suffix else ''}",
                    f"mlpulse, {workload}{_label_suffix(states, modes)}{suffix}",
                    "mlpulse",
                    count,
                    batch=batch,
                    workload=workload,
                    round=round_no,
                    history_flush_s=args.history_flush_seconds,
                    **states,
                )
                for states in ordered
            ]
    # The paced phase is there for latency, so it runs once, each switch on unless only off.
    steady = {name: found[-1] for name, found in modes.items()}
    phases.append(
        Phase(
            "steady",
            f"mlpulse, steady {steady_rate:g}/s for {steady_seconds:g} s"
            f"{_label_suffix(steady, modes)}",
            "mlpulse",
            int(steady_rate * steady_seconds),
            batch=1,
            rate=steady_rate,
            workload=f"steady {steady_rate:g}/s",
            history_flush_s=args.history_flush_seconds,
            **steady,
        )
    )
    if args.only != "all":
        phases = [p for p in phases if p.system == args.only]
    return phases


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Benchmark the seed-style baseline, a lean reference and mlpulse end to end."
    )
    parser.add_argument(
        "--only",
        choices=("all", "baseline", "lean", "mlpulse"),
        default="all",
        help="run one system only: the seed-style baseline, the lean reference "
        "(bench/lean_reference.py) or mlpulse (default: all three)",
    )
    parser.add_argument(
        "--drift",
        choices=("both", "on", "off"),
        default="both",
        help="run the mlpulse workloads with the model role's drift counting on, off, or "
        "both back to back (default)",
    )
    parser.add_argument(
        "--history",
        choices=("both", "on", "off"),
        default="on",
        help="run the mlpulse workloads with the metric role's Parquet history on (default, "
        "as shipped), off, or both back to back; with --drift both as well, every workload "
        "runs all four ways",
    )
    parser.add_argument(
        "--history-flush-seconds",
        type=positive_float,
        default=DEFAULT_HISTORY_FLUSH_S,
        help="MLPULSE_HISTORY_FLUSH_SECONDS of history-on phases (default "
        f"{DEFAULT_HISTORY_FLUSH_S:g}, so a phase of a few seconds flushes several times; "
        f"shipped: {SHIPPED_HISTORY_FLUSH_S:g})",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="run the frames-of-500 and single-message workloads this many times (with "
        "--drift or --history both: off/on, then on/off, ...); the report gives the median "
        "ratio",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"divide event counts by {QUICK_DIVISOR}, steady phase "
        f"{QUICK_STEADY_SECONDS} s (smoke run)",
    )
    parser.add_argument("--baseline-count", type=int, help="default 2,000")
    parser.add_argument("--batch-count", type=int, help="default 100,000")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--single-count", type=int, help="default 20,000")
    parser.add_argument("--steady-rate", type=float, default=DEFAULT_STEADY_RATE)
    parser.add_argument("--steady-seconds", type=float, help="default 30")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_PHASE_TIMEOUT_S,
        help="give up on a phase after this many seconds",
    )
    parser.add_argument("--keep", action="store_true", help="keep each phase's temp dir")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected phases and print the report; non-zero if any phase has notes."""
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    ensure_vhost()
    results = [run_phase(phase, args.timeout, args.keep) for phase in build_phases(args)]
    report = render_report(results, command)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 1 if any(r.notes or r.rows < r.phase.count for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
