"""One fault run: roles on the private nodes, a recorded stream, faults, then the verdict.

A run starts the roles, streams events through `Publisher`, and lets the test inject its
faults one at a time. Each fault is recorded with the rows in the log and the events
confirmed at that moment, so the run can prove it landed mid-stream, and with its recovery
time: from the fault to the first row of an event sent after it (the whole pipeline is
working again). At the end every role is stopped with SIGTERM and the checker classifies
every confirmed event. The one-line summary is printed and collected for the terminal
report (see conftest.py).
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import QUEUES, Env, Readiness, Role, wait_released, wait_until
from tests.faults.checker import Verdict, check, read_log
from tests.faults.stream import Publisher
from tests.nodes import RabbitNode

SOAK = os.environ.get("MLPULSE_SOAK", "") not in ("", "0")
SUMMARIES: list[str] = []
COLUMNS = ["id", "y_true", "y_pred", "absolute_error", "model_version",
           "sent_at", "joined_at", "logged_at", "pos"]
SENT_AT, LOGGED_AT = COLUMNS.index("sent_at"), COLUMNS.index("logged_at")
DATA_QUEUES = ("features", "y_true", "y_pred")


@dataclass(frozen=True)
class Scale:
    """How big a run is: fault rounds, events (at least), events per second, frame size."""

    rounds: int
    events: int
    rate: float = 500.0
    batch: int = 20


def scale(ci: Scale, soak: Scale) -> Scale:
    """The CI size, or the soak size under `make soak` (MLPULSE_SOAK=1)."""
    return soak if SOAK else ci


@dataclass
class Fault:
    """One injected fault and what the run looked like at that moment."""

    name: str
    at: float
    rows: int
    confirmed: int
    recovery: float | None = None


class LogTail:
    """Rows appended to the metric log since the last look, whole lines only.

    Polling reads only what is new, so a long run does not re-read its whole log twenty
    times a second. A torn last line, cut by the sink's recovery, is never read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0  # rows read so far

    def new_rows(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        rows = list(csv.reader(io.StringIO(data[:end + 1].decode())))
        if self.offset == 0:
            rows = rows[1:]  # the header
        self.offset += end + 1
        self.count += len(rows)
        return rows

    def rows(self) -> int:
        """Rows in the log now."""
        self.new_rows()
        return self.count


@dataclass
class FaultRun:
    """Roles, a stream and the faults of one test."""

    env: Env
    start_role: Callable[..., Role]
    title: str
    size: Scale
    roles: dict[str, Role] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    broker: RabbitNode | None = None
    publisher: Publisher | None = None
    restarts: int = 0
    first_pids: dict[str, int] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)  # more figures for the summary

    def __post_init__(self) -> None:
        self.tail = LogTail(self.env.metric_log)
        # The plot role checks for new data twice a second, so a restart shows quickly.
        self.env.vars.setdefault("MLPULSE_PLOT_INTERVAL", "0.5")

    def start(self, *names: str, publisher: Publisher | None = None) -> Publisher:
        """Start the roles, each ready by the broker's and Redis's account, then the stream."""
        for name in names:
            self.roles[name] = self.start_role(name)
        self.first_pids = {name: role.proc.pid for name, role in self.roles.items()}
        self.publisher = publisher or Publisher(self.env.amqp_url, self.size.events,
                                                batch=self.size.batch, rate=self.size.rate)
        self.publisher.start()
        return self.publisher

    @property
    def stream(self) -> Publisher:
        assert self.publisher is not None, "start() first"
        return self.publisher

    def add_role(self, name: str, role: Role) -> None:
        """A role started by the test itself (the gateway), stopped and checked with the rest."""
        self.roles[name] = role
        self.first_pids[name] = role.proc.pid

    def assert_same_processes(self) -> None:
        """No role died or was restarted: each rode out the faults by itself."""
        for name, role in self.roles.items():
            assert role.proc.poll() is None, f"{name} died:\n{role.output()[-3000:]}"
        assert {name: role.proc.pid for name, role in self.roles.items()} == self.first_pids

    def thresholds(self) -> list[int]:
        """Rows in the log at which to inject each round, spread over the stream."""
        n = self.size.rounds
        return [self.size.events * (k + 1) // (n + 1) for k in range(n)]

    def wait_rows(self, n: int, timeout: float = 120.0) -> None:
        def there() -> bool:
            if self.stream.error is not None:
                raise AssertionError(f"the publisher failed: {self.stream.error!r}")
            return self.tail.rows() >= n

        self._wait(there, timeout, f"{n} rows in the log")

    def inject(self, name: str, action: Callable[[], object]) -> Fault:
        """Do the damage, then record the moment: when `action` returns the fault is in
        effect (`rabbitmqctl stop_app` takes a second before the broker stops)."""
        action()
        fault = Fault(name, time.time(), self.tail.rows(), self.stream.confirmed)
        self.faults.append(fault)
        return fault

    def kill_and_restart(self, name: str) -> Fault:
        """`kill -9` a role (and anything it started), and start it again once the broker
        has dropped its consumers."""
        victim = self.roles[name]
        fault = self.inject(f"kill -9 {name}", victim.kill)
        assert victim.proc.returncode == -9, f"{name} exited with {victim.proc.returncode}"
        wait_released(self.env, name)
        self.roles[name] = self.start_role(name)
        self.restarts += 1
        return fault

    def wait_recovered(self, fault: Fault, since: float | None = None,
                       timeout: float = 180.0) -> float:
        """Wait for a row of an event sent after `since` (the fault by default)."""
        t0 = fault.at if since is None else since

        def recovered() -> bool:
            for row in self.tail.new_rows():
                if len(row) == len(COLUMNS) and row[SENT_AT] and float(row[SENT_AT]) > t0:
                    fault.recovery = float(row[LOGGED_AT]) - t0
                    return True
            return False

        self._wait(recovered, timeout, f"a row sent after {fault.name}")
        assert fault.recovery is not None
        return fault.recovery

    def _wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """`wait_until`, with the state of the run in the message when it times out."""
        try:
            wait_until(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose()}") from None

    def diagnose(self) -> str:
        """Where the events are: the stream, the log, Redis, the broker, each role's output."""
        client = self.env.redis()
        try:
            redis_view = (f"agg count {int(client.hget('mlpulse:agg', 'count') or 0)}, outbox "
                          f"{client.xlen('mlpulse:joined')} entries, pending (t, p) "
                          f"{client.hlen('mlpulse:pending:t')}, {client.hlen('mlpulse:pending:p')}")
        except Exception as exc:  # a report must not fail because Redis is down
            redis_view = f"Redis unreadable: {exc!r}"
        finally:
            client.close()
        lines = [f"stream: {self.stream.sent} sent, {self.stream.confirmed} confirmed, "
                 f"error {self.stream.error!r}", f"log: {self.tail.rows()} rows",
                 f"redis: {redis_view}"]
        if self.broker is not None:
            lines.append(f"broker:\n{self.broker.queues()}")
        for name, role in self.roles.items():
            tail = "".join(role.lines[-15:])
            lines.append(f"--- {name} (exit {role.proc.poll()}):\n{tail}")
        return "\n".join(lines)

    def finish(self, *, dead_letters: int = 0, settle: float = 120.0) -> Verdict:
        """End the stream, let it drain, stop every role, check, report, assert."""
        self.stream.release()
        self.stream.wait(settle)
        problems: list[str] = []
        for name, role in self.roles.items():
            if role.proc.poll() is not None:
                problems.append(f"{name} died (exit {role.proc.returncode}):\n"
                                f"{role.output()[-3000:]}")
        settled = _settle(self.env, lambda: self.tail.rows() >= self.stream.confirmed,
                          settle)
        for name, role in self.roles.items():
            if role.proc.poll() is None:
                code = role.stop(timeout=30)
                if code != 0:
                    problems.append(f"{name} exited with {code} on SIGTERM:\n"
                                    f"{role.output()[-3000:]}")
        verdict = check(self.stream.history, read_log(self.env.metric_log))
        line = self.summary(verdict)
        print(line)
        SUMMARIES.append(line)
        if not verdict.clean:
            problems.append(f"checker: {verdict.explain()}")
        problems.extend(self._mid_stream(verdict.events))
        problems.extend(_leftovers(self.env, verdict.rows, dead_letters))
        if not settled and verdict.clean:
            problems.append("the log did not reach every confirmed event in time")
        assert not problems, f"{line}\n" + "\n".join(problems)
        return verdict

    def summary(self, verdict: Verdict) -> str:
        recoveries = [f.recovery for f in self.faults if f.recovery is not None]
        rec = (f"recovery max={max(recoveries):.2f}s mean={statistics.fmean(recoveries):.2f}s"
               if recoveries else "recovery -")
        at = ",".join(str(f.rows) for f in self.faults)
        notes = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (f"FAULT {self.title}: rounds={len(self.faults)} {verdict.counts()} {rec} "
                f"rows_at_faults=[{at}] role_restarts={self.restarts} "
                f"producer_connections={self.stream.connections}{notes}")

    def _mid_stream(self, events: int) -> Iterable[str]:
        """Each fault hit a live stream: some rows logged, some events still to come."""
        if not self.faults:
            yield "no fault was injected"
        for f in self.faults:
            if not 0 < f.rows < events or f.confirmed >= events:
                yield (f"{f.name} at {f.rows} rows and {f.confirmed} confirmed of {events} "
                       "events did not land mid-stream")
            if f.recovery is None:
                yield f"{f.name}: recovery not measured"


def _settle(env: Env, logged: Callable[[], bool], timeout: float) -> bool:
    """Wait until the log has as many rows as confirmed events and the queues are empty."""
    view = Readiness(env)

    def drained() -> bool:
        if not logged():
            return False
        return all(view.channel.queue_declare(q, durable=True, passive=True).method
                   .message_count == 0 for q in DATA_QUEUES)

    try:
        wait_until(drained, timeout, "every confirmed event in the log, and empty queues")
    except AssertionError:
        return False  # the checker says what is missing
    finally:
        view.close()
    return True


def _leftovers(env: Env, rows: int, dead_letters: int) -> Iterable[str]:
    """After the stop: Redis counts what the log holds; no half waits, nothing is queued."""
    client = env.redis()
    try:
        count = int(client.hget("mlpulse:agg", "count") or 0)
        pending = client.hlen("mlpulse:pending:t"), client.hlen("mlpulse:pending:p")
    finally:
        client.close()
    if count != rows:
        yield f"Redis mlpulse:agg count is {count}, the log has {rows} rows"
    if any(pending):
        yield f"halves still pending in Redis (y_true, y_pred): {pending}"
    view = Readiness(env)
    try:
        depths = {q: view.channel.queue_declare(q, durable=True, passive=True).method
                  .message_count for q in QUEUES}
    finally:
        view.close()
    expected = {**dict.fromkeys(DATA_QUEUES, 0), "mlpulse.dead": dead_letters}
    if depths != expected:
        yield f"queues hold {depths}, expected {expected}"
    if not env.metric_log.read_bytes().endswith(b"\n"):
        yield "the log ends with a partial line"
