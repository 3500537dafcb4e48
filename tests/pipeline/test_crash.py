"""Faults through real processes and real signals: `kill -9` mid-stream, torn CSV lines.

The promise under test: every id that both halves reached is written to the metric log
exactly once, whatever moment a process dies at, and Redis agrees with the file.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable

import pytest

from tests.conftest import QUEUES, VHOST, Env, Role, produce, wait_until

COLUMNS = ["id", "y_true", "y_pred", "absolute_error", "model_version",
           "sent_at", "joined_at", "logged_at", "pos"]
POS = re.compile(r"^(\d+)-(\d+):(\d+)$")

# A stream long and slow enough that three crashes and restarts happen inside it.
TOTAL = 6000
RATE = "600"
FRAME = "50"
THRESHOLDS = (1000, 2500, 4000)
# At each kill at least this many events must still be on their way to the log.
MIN_IN_FLIGHT = 1000


def agg_count(env: Env) -> int:
    r = env.redis()
    try:
        return int(r.hget("mlpulse:agg", "count") or 0)
    finally:
        r.close()


def queue_depths(env: Env) -> dict[str, int]:
    """Messages ready in each pipeline queue (unacked ones are not counted by the broker)."""
    ch = env.channel()
    try:
        return {q: ch.queue_declare(q, durable=True, passive=True).method.message_count
                for q in QUEUES}
    finally:
        ch.connection.close()


def start_stream(spawn: Callable[..., Role], count: int, rate: str = RATE,
                 batch: str = FRAME) -> tuple[Role, str]:
    """A producer running in the background; returns it and its run id."""
    producer = spawn("produce", "--count", str(count), "--batch", batch, "--rate", rate,
                     ready=None)
    line = producer.lines[producer.wait_for(r"as run \S+")]
    match = re.search(r"as run (\S+)", line)
    assert match is not None
    return producer, match.group(1)


def run_of(producer_output: str) -> str:
    match = re.search(r"as run (\S+)", producer_output)
    assert match is not None, producer_output
    return match.group(1)


def ids_of(run: str, count: int) -> set[str]:
    return {f"{run}-{i}" for i in range(count)}


def broker_view() -> str:
    """Ready and unacked messages per queue, as the broker sees them (for failure reports)."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return "(rabbitmqctl not found)"
    done = subprocess.run([ctl, "-q", "list_queues", "-p", VHOST, "name", "messages_ready",
                           "messages_unacknowledged", "consumers"],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or done.stderr.strip()


def wait_for_rows(env: Env, total: int, timeout: float = 60.0) -> None:
    """Wait until the log holds `total` rows; on a timeout, say where the rest are."""
    try:
        wait_until(lambda: env.row_count() >= total, timeout=timeout)
    except AssertionError:
        r = env.redis()
        pending = r.hlen("mlpulse:pending:t"), r.hlen("mlpulse:pending:p")
        r.close()
        raise AssertionError(
            f"{env.row_count()} of {total} rows after {timeout}s; Redis count "
            f"{agg_count(env)}, halves pending (t, p) {pending}; broker:\n{broker_view()}"
        ) from None


def finish_stream(env: Env, producer: Role, total: int, timeout: float = 60.0) -> None:
    """Wait for the producer to exit cleanly and for every row to reach the log."""
    assert producer.proc.wait(timeout) == 0, producer.output()
    producer.close()
    wait_for_rows(env, total, timeout)
    wait_until(lambda: not any(queue_depths(env).values()), timeout=timeout,
               what="empty queues")


def stop_all(*roles: Role) -> None:
    """SIGTERM each role in turn; each must stop cleanly."""
    for role in roles:
        code = role.stop(timeout=30)
        assert code == 0, f"{role.args} exited with {code}:\n{role.output()}"


def read_log(env: Env) -> tuple[list[str], list[list[str]]]:
    raw = env.metric_log.read_bytes()
    assert raw.endswith(b"\n"), f"log ends with a partial line: {raw[-200:]!r}"
    with env.metric_log.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    return header, rows


def assert_log_exact(env: Env, expected: set[str]) -> list[list[str]]:
    """Every expected id once, nothing else, every row well-formed, Redis in agreement."""
    header, rows = read_log(env)
    assert header == COLUMNS
    malformed = [r for r in rows if len(r) != len(COLUMNS)]
    assert not malformed, f"{len(malformed)} malformed rows, e.g. {malformed[:3]}"
    seen = Counter(r[0] for r in rows)
    twice = {i: n for i, n in seen.items() if n > 1}
    assert not twice, f"{len(twice)} ids written more than once, e.g. {list(twice)[:5]}"
    missing = expected - seen.keys()
    assert not missing, f"{len(missing)} ids lost, e.g. {sorted(missing)[:5]}"
    extra = seen.keys() - expected
    assert not extra, f"{len(extra)} unexpected ids, e.g. {sorted(extra)[:5]}"
    positions = []
    for r in rows:
        row = dict(zip(COLUMNS, r, strict=True))
        assert float(row["absolute_error"]) == abs(float(row["y_true"]) - float(row["y_pred"])), r
        assert row["model_version"] == "v1", r
        assert float(row["joined_at"]) > 0, r
        assert float(row["logged_at"]) >= float(row["joined_at"]), r
        match = POS.match(row["pos"])
        assert match is not None, f"bad pos in {r}"
        positions.append(tuple(int(g) for g in match.groups()))
    assert positions == sorted(positions), "rows are not in outbox order"
    assert len(set(positions)) == len(positions), "a position was written twice"
    assert agg_count(env) == len(rows)
    return rows


def assert_nothing_left(env: Env) -> None:
    """After every role stopped: no message unacked or dead, no half still waiting."""
    assert queue_depths(env) == dict.fromkeys(QUEUES, 0)
    r = env.redis()
    try:
        assert r.hlen("mlpulse:pending:t") == 0
        assert r.hlen("mlpulse:pending:p") == 0
    finally:
        r.close()


def crash_rounds(env: Env, spawn: Callable[..., Role], name: str, role: Role,
                 total: int) -> Role:
    """`kill -9` the role each time the log passes a threshold, and start it again."""
    for threshold in THRESHOLDS:
        wait_until(lambda t=threshold: env.row_count() >= t, timeout=40,
                   what=f"{threshold} rows before killing {name}")
        role.kill()
        logged = env.row_count()
        assert role.proc.returncode == -9
        assert total - logged >= MIN_IN_FLIGHT, (
            f"only {total - logged} events were still in flight when {name} was killed")
        role = spawn(name)
    return role


def poll(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """A fine-grained `wait_until`, for moments that last a fraction of a second."""
    wait_until(predicate, timeout, what, interval=0.002)


@pytest.mark.parametrize("name", ["metric", "model"])
def test_kill_9_mid_stream_loses_and_duplicates_nothing(
        env: Env, spawn: Callable[..., Role], name: str) -> None:
    roles = {"model": spawn("model"), "metric": spawn("metric")}
    producer, run = start_stream(spawn, TOTAL)
    roles[name] = crash_rounds(env, spawn, name, roles[name], TOTAL)
    finish_stream(env, producer, TOTAL)
    stop_all(roles["model"], roles["metric"])
    assert_log_exact(env, ids_of(run, TOTAL))
    assert_nothing_left(env)


@pytest.mark.parametrize(
    ("name", "inputs", "backlog", "rounds"),
    [("metric", ("y_true", "y_pred"), 1000, 4), ("model", ("features",), 600, 3)],
)
def test_kill_9_while_catching_up_on_a_backlog(
        env: Env, spawn: Callable[..., Role], name: str, inputs: tuple[str, ...],
        backlog: int, rounds: int) -> None:
    """Seed-style single messages pile up while the role is down; it is killed again in
    the middle of catching up, when it has the most batches in hand."""
    roles = {"model": spawn("model"), "metric": spawn("metric")}
    total = 8000
    producer, run = start_stream(spawn, total, rate="800", batch="1")
    wait_until(lambda: env.row_count() >= 500, what="500 rows")
    roles[name].kill()
    for _ in range(rounds):
        wait_until(lambda: sum(queue_depths(env)[q] for q in inputs) >= backlog
                   or producer.proc.poll() is not None, what="a backlog")
        before = env.row_count()
        roles[name] = spawn(name)
        poll(lambda b=before: env.row_count() >= b + 100, what="the catch-up to start")
        roles[name].kill()
        logged = env.row_count()
        assert total - logged >= MIN_IN_FLIGHT, (
            f"only {total - logged} events were still in flight when {name} was killed")
    roles[name] = spawn(name)
    finish_stream(env, producer, total)
    stop_all(roles["model"], roles["metric"])
    assert_log_exact(env, ids_of(run, total))
    assert_nothing_left(env)


def _cut_last_row(env: Env) -> str:
    """Drop the second half of the last row and its newline, as a crash mid-write would."""
    data = env.metric_log.read_bytes()
    start = data.rindex(b"\n", 0, len(data) - 1) + 1
    last = data[start:]
    env.metric_log.write_bytes(data[:start + len(last) // 2])
    return last.decode()


def _append_partial_row(env: Env) -> str:
    """A row that was being appended when the process died: no newline, cut mid-field."""
    with env.metric_log.open("ab") as f:
        f.write(b"torn-row-that-never-finished,151.0,14")
    return ""


@pytest.mark.parametrize(
    ("tear", "last_batch"),
    [
        pytest.param(_cut_last_row, "50", id="cut-row-inside-multi-row-entry"),
        pytest.param(_cut_last_row, "1", id="cut-row-of-single-row-entry"),
        pytest.param(_append_partial_row, "50", id="partial-row-appended"),
    ],
)
def test_torn_last_line_is_repaired_on_restart(
        env: Env, spawn: Callable[..., Role], tear: Callable[[Env], str],
        last_batch: str) -> None:
    """A crash mid-write leaves part of a row at the end of the log; the next start cuts it
    and writes the rows from the outbox again, each once."""
    model = spawn("model")
    metric = spawn("metric")
    first = run_of(produce(env, "--count", "1000", "--batch", "50", "--rate", "0"))
    # The last row of the file is alone in its outbox entry when it comes from a single
    # event produced after everything else was logged.
    last_count = 1 if last_batch == "1" else 100
    wait_until(lambda: env.row_count() >= 1000, what="1000 rows")
    second = run_of(produce(env, "--count", str(last_count), "--batch", last_batch,
                            "--rate", "0"))
    wait_until(lambda: env.row_count() >= 1000 + last_count, what="all rows before the tear")
    metric.kill()
    before = env.row_count()
    assert before == 1000 + last_count
    _, rows = read_log(env)
    last_entry, last_index = rows[-1][8].rsplit(":", 1)
    if last_batch == "1":
        assert last_index == "0"
        assert rows[-2][8].rsplit(":", 1)[0] != last_entry
    else:
        assert int(last_index) > 0
    torn_line = tear(env)
    assert not env.metric_log.read_bytes().endswith(b"\n")

    # New work arrives while the metric is down.
    third = run_of(produce(env, "--count", "500", "--batch", "50", "--rate", "0"))
    metric = spawn("metric")
    metric.wait_for("cutting a torn last line")
    expected = ids_of(first, 1000) | ids_of(second, last_count) | ids_of(third, 500)
    wait_until(lambda: env.row_count() >= len(expected), what=f"{len(expected)} rows")
    wait_until(lambda: not any(queue_depths(env).values()), what="empty queues")
    stop_all(model, metric)
    rows = assert_log_exact(env, expected)
    if torn_line:
        # The repaired row is the torn one again: same id, values and outbox position.
        original = next(csv.reader([torn_line]))
        again = next(r for r in rows if r[0] == original[0])
        assert again[:7] == original[:7]
        assert again[8] == original[8]
    assert_nothing_left(env)
