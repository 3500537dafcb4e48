"""WebSocket fan-out benchmark: many clients, in separate processes, against one gateway.

Run from the repository root with the project virtualenv::

    python bench/fanout.py                       # 1k, 5k, 10k clients; both workloads, 20 s
    python bench/fanout.py --levels 1000,10000 --seconds 10 --workload broadcast
    python bench/fanout.py --compare-rev b6646a5 # that revision's gateway beside this tree's
    python bench/fanout.py --gateway-rev b6646a5 # only that revision's gateway

Per level and workload: one `mlpulse gateway` process; client processes that each hold a
share of the connections (one user per connection) on raw sockets, an `asyncio.Protocol`
each that does its own upgrade and parses frames from a per-connection buffer; a publisher
that sends JSON messages to `mlpulse.events`, each carrying its publish time, so a client
measures publish-to-receipt latency on the same clock. Workloads:

- `mixed`: every second, one broadcast (`tick`) to everyone and one own message (`note`)
  to every user;
- `broadcast`: `--broadcast-rate` broadcasts a second (10 by default), no own messages.

The traffic window runs from the first publish until every client process has reported
every expected tick and note (or `--timeout` seconds after the last publish). Over it:
the gateway's user+system CPU from /proc/<pid>/stat divided by the messages the clients
received (every text frame counts, snapshots included), the delivered share, p50/p99
latency of the timed messages, and each client process's CPU.

With `--pin` (the default on 2 or more CPUs) the gateway runs under `taskset -c 0`, and the
clients and the publisher under `taskset -c 1-`; RabbitMQ and Redis are not pinned and
run wherever the kernel puts them. Uses the RabbitMQ vhost `mlpulse-bench-ws` and Redis
DB 13, so it can run beside the other benchmarks (`mlpulse-bench`, DB 14).

On a shared machine only figures of the same invocation compare: `--compare-rev REV` runs
the gateway of REV (from a temporary `git worktree`) beside the one of this working tree,
alternating for every level and workload, and gives the ratio new / old.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import orjson
import uvloop

REPO_ROOT = Path(__file__).resolve().parent.parent
VHOST = "mlpulse-bench-ws"
AMQP_URL = f"amqp://guest:guest@localhost:5672/{VHOST}"
REDIS_DB = 13
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
EXCHANGE = "mlpulse.events"
SAMPLES_PER_CLIENT_PROC = 50_000
WORKLOADS = ("mixed", "broadcast")
TIMED_TYPES = ("tick", "note")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONNECT_BATCH = 100
CONNECT_TIMEOUT = 60.0
REPORT_EVERY = 0.05  # how often a client process reports its counts, when they moved
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- client processes

class Tally:
    """What one client process saw over all its connections."""

    __slots__ = ("closes", "connected", "failed", "frames", "lat", "open", "pings", "timed")

    def __init__(self) -> None:
        self.connected = 0
        self.open = 0
        self.frames = 0  # data messages (text or binary), every type
        self.timed = 0  # ticks and notes
        self.pings = 0
        self.lat: list[float] = []
        self.failed: dict[str, int] = {}  # handshakes that did not end in 101
        self.closes: dict[str, int] = {}  # open sockets that ended, by close code

    def record(self, latency: float) -> None:
        """Reservoir sampling keeps memory flat at 10k clients."""
        self.timed += 1
        if len(self.lat) < SAMPLES_PER_CLIENT_PROC:
            self.lat.append(latency)
        else:
            j = random.randrange(self.timed)
            if j < SAMPLES_PER_CLIENT_PROC:
                self.lat[j] = latency

    @staticmethod
    def bump(counts: dict[str, int], key: str) -> None:
        counts[key] = counts.get(key, 0) + 1


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's control frame (FIN set, payload of at most 125 bytes), masked."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


class WsClient(asyncio.Protocol):
    """One WebSocket connection: the upgrade, then frames parsed out of a buffer.

    Only ticks and notes are decoded (their JSON carries the publish time); any other
    message is counted by its frame header alone. Pings are answered, a close is echoed."""

    __slots__ = ("accept", "buf", "done", "request", "tally", "transport", "upgraded")

    def __init__(self, request: bytes, accept: bytes, tally: Tally,
                 done: asyncio.Future[str | None]) -> None:
        self.request = request
        self.accept = accept
        self.tally = tally
        self.done = done  # None once upgraded, else why not
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upgraded:
            self.tally.open -= 1
            self.upgraded = False
            Tally.bump(self.tally.closes, "lost" if exc is None else type(exc).__name__)
        elif not self.done.done():
            self.done.set_result("closed before the upgrade")

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.frames(data)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = bytes(self.buf[:end]), bytes(self.buf[end + 4:])
        self.buf.clear()
        failure = self.check_upgrade(head)
        if failure is not None:
            if not self.done.done():
                self.done.set_result(failure)
            assert self.transport is not None
            self.transport.close()
            return
        self.upgraded = True
        self.tally.connected += 1
        self.tally.open += 1
        if not self.done.done():
            self.done.set_result(None)
        if rest:
            self.frames(rest)

    def check_upgrade(self, head: bytes) -> str | None:
        """None for a valid 101 answer to our key, else what was wrong."""
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"101":
            return f"http {status[1].decode(errors='replace') if len(status) > 1 else '?'}"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                return None if value.strip() == self.accept else "bad accept"
        return "no accept"

    def frames(self, data: bytes) -> None:
        """Count, time and answer every complete frame; keep the rest for the next read."""
        buf = self.buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        now = time.time()
        tally = self.tally
        n = len(view)
        pos = 0
        while n - pos >= 2:
            head, size = frame_header(view, pos, n)
            if head < 0:  # a masked frame from a server breaks the protocol
                self.fail("masked server frame")
                return
            end = pos + head + size
            if head == 0 or end > n:
                break
            opcode = view[pos] & 0x0F
            if opcode == 1:
                tally.frames += 1
                start = pos + head
                # Cheap test first: only a frame that names a timed type is parsed.
                if view.find(b'"tick"', start, end) >= 0 or view.find(b'"note"', start, end) >= 0:
                    doc = orjson.loads(view[start:end])
                    if doc.get("type") in TIMED_TYPES:
                        tally.record(now - doc["ts"])
            elif opcode < 8:
                tally.frames += 1
            else:
                self.control(opcode, bytes(view[pos + head:end]))
            pos = end
        if view is buf:
            del buf[:pos]
        elif pos < n:
            buf += view[pos:]

    def control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == 0x9:  # ping: the server closes a socket that does not answer
            self.tally.pings += 1
            self.transport.write(masked_frame(0xA, payload))
        elif opcode == 0x8:  # close: echo the code, and the server ends the TCP connection
            code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
            Tally.bump(self.tally.closes, str(code))
            self.upgraded = False
            self.tally.open -= 1
            self.transport.write(masked_frame(0x8, payload[:2]))

    def fail(self, why: str) -> None:
        Tally.bump(self.tally.closes, why)
        assert self.transport is not None
        self.transport.abort()


def frame_header(view: bytes | bytearray, pos: int, n: int) -> tuple[int, int]:
    """(header length, payload length) of the frame at `pos`; (0, 0) while its header is
    incomplete, (-1, 0) for a masked frame."""
    size = view[pos + 1]
    if size < 126:
        return 2, size
    if size == 126:
        return (4, int.from_bytes(view[pos + 2:pos + 4])) if n - pos >= 4 else (0, 0)
    if size == 127:
        return (10, int.from_bytes(view[pos + 2:pos + 10])) if n - pos >= 10 else (0, 0)
    return -1, 0


def upgrade_request(port: int, token: str) -> tuple[bytes, bytes]:
    """The HTTP upgrade request for one socket, and the Sec-WebSocket-Accept it expects."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # RFC 6455
    request = (f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return request.encode(), accept


async def _open(port: int, token: str, tally: Tally) -> None:
    """Connect and upgrade one socket; a failure is counted, never raised."""
    loop = asyncio.get_running_loop()
    request, accept = upgrade_request(port, token)
    done: asyncio.Future[str | None] = loop.create_future()
    transport: asyncio.Transport | None = None
    failure: str | None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            transport, _ = await loop.create_connection(
                lambda: WsClient(request, accept, tally, done), "127.0.0.1", port)
            failure = await done
    except TimeoutError:
        failure = "handshake timeout"
    except OSError as exc:
        failure = type(exc).__name__
    if failure is not None:
        Tally.bump(tally.failed, failure)
        if transport is not None:
            transport.abort()


async def _client_main(port: int, first: int, count: int, out: Path) -> None:
    from mlpulse.gateway.auth import issue_token

    tally = Tally()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks: list[asyncio.Task[None]] = []
    for start in range(first, first + count, CONNECT_BATCH):
        tasks.extend(asyncio.create_task(_open(port, issue_token(SECRET.encode(), f"u{i}",
                                                                ttl=3600), tally))
                     for i in range(start, min(start + CONNECT_BATCH, first + count)))
        # Let the gateway's accept queue drain: the next batch starts once the one before
        # this one has finished its handshakes, so at most two are under way.
        await asyncio.sleep(0.05)
        if len(tasks) > CONNECT_BATCH:
            await asyncio.wait(tasks[-2 * CONNECT_BATCH:-CONNECT_BATCH])
    await asyncio.gather(*tasks)
    print(f"connected {tally.connected} {json.dumps(tally.failed, separators=(',', ':'))}",
          flush=True)
    last = (-1, -1)
    while not stop.is_set():
        now = (tally.timed, tally.frames)
        if now != last:
            print(f"count {now[0]} {now[1]}", flush=True)
            last = now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REPORT_EVERY)
    doc = {"connected": tally.connected, "held": tally.open, "frames": tally.frames,
           "timed": tally.timed, "pings": tally.pings, "lat": tally.lat,
           "failed": tally.failed, "closes": tally.closes}
    await asyncio.to_thread(out.write_bytes, orjson.dumps(doc))


# ---------------------------------------------------------------- measurement helpers

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat; 0 if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(b")") + 2:].split()  # fields[0] is field 3, the state
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_wait_seconds(pid: int) -> float:
    """How long the threads of a process have been runnable but waiting for a core
    (/proc/<pid>/task/*/schedstat, second field); 0 if gone."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmHWM is the peak RSS); 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def core_ticks() -> list[tuple[int, int]]:
    """(busy, total) clock ticks of every core since boot, from /proc/stat."""
    ticks = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            counts = [int(v) for v in values[:8]]
            total = sum(counts)
            ticks.append((total - counts[3] - counts[4], total))  # less idle and iowait
    return ticks


def broker_pids() -> list[int]:
    """RabbitMQ's and Redis's server processes, whose CPU the load shares."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in ("beam.smp", "redis-server"):
                    pids.append(int(entry.name))
    return pids


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


# ---------------------------------------------------------------- harness

@dataclass(frozen=True)
class GatewayCode:
    """Which gateway a run starts: a label for the report and the src directory to import."""

    label: str
    src: Path


@dataclass(frozen=True)
class Plan:
    """What every run of one invocation shares."""

    seconds: float
    broadcast_rate: float
    procs: int
    timeout: float
    pin: bool

    def taskset(self, gateway: bool) -> list[str]:
        """The command prefix that pins a process: core 0 for the gateway, 1- for the rest."""
        if not self.pin:
            return []
        cores = os.cpu_count() or 2
        return ["taskset", "-c", "0" if gateway else ("1" if cores == 2 else f"1-{cores - 1}")]


@dataclass
class Cell:
    """One run: a gateway, a number of clients and a workload, and what it measured."""

    gateway: str
    workload: str
    clients: int
    connected: int = 0
    held: int = 0
    published: int = 0
    publish_s: float = 0.0
    expected: int = 0
    delivered: int = 0  # timed messages the clients had when the window closed
    messages: int = 0  # every message the clients received in the window
    window_s: float = 0.0
    timed_out: bool = False
    gateway_cpu_s: float = 0.0
    gateway_wait_s: float = 0.0  # runnable, but another process had its core
    rss_mib: float = 0.0
    client_cpu: list[float] = field(default_factory=list)  # per process, share of a core
    rest_cpu: float = 0.0  # publisher, RabbitMQ and Redis, share of a core
    core_busy: list[float] = field(default_factory=list)  # every core, whatever ran on it
    pings: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    failed: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    # From the gateway's own counters (absent in revisions without them): CPU of parsing and
    # routing events, of writing them to sockets, and how many events were relayed.
    relay_cpu_s: float | None = None
    fanout_cpu_s: float | None = None
    relayed: float = 0.0

    @property
    def us_per_delivery(self) -> float | None:
        return 1e6 * self.gateway_cpu_s / self.messages if self.messages else None

    @property
    def delivered_share(self) -> float:
        return self.delivered / self.expected if self.expected else 0.0


class Publisher:
    """Publishes ticks to `broadcast` and notes to `user.<name>` on the events exchange."""

    def __init__(self) -> None:
        self.conn: Any = None
        self.raw: Any = None

    async def open(self) -> None:
        import aio_pika

        self.conn = await aio_pika.connect(AMQP_URL)
        channel = await self.conn.channel(publisher_confirms=False)
        await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        self.raw = await channel.get_underlay_channel()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def run(self, rate: float, seconds: float, users: int) -> tuple[int, int, float]:
        """`rate` rounds a second for `seconds`; a round is one tick and, if `users`, one
        note per user. A round is always published whole. Returns (ticks, rounds of
        notes, elapsed seconds)."""
        hist = list(range(40))
        rounds = max(1, round(rate * seconds))
        start = time.monotonic()
        for k in range(rounds):
            tick = {"type": "tick", "ts": time.time(),
                    "data": {"count": k, "mae": 43.2, "hist": hist}}
            await self.raw.basic_publish(orjson.dumps(tick), exchange=EXCHANGE,
                                         routing_key="broadcast")
            for u in range(users):
                note = {"type": "note", "ts": time.time(), "data": {"n": k}}
                await self.raw.basic_publish(orjson.dumps(note), exchange=EXCHANGE,
                                             routing_key=f"user.u{u}")
            delay = start + (k + 1) / rate - time.monotonic()
            if delay > 0 and k + 1 < rounds:  # no idle tail after the last round
                await asyncio.sleep(delay)
        return rounds, rounds if users else 0, time.monotonic() - start


@dataclass
class ClientProc:
    """A client process as the harness sees it: its latest counts, from its stdout."""

    proc: asyncio.subprocess.Process
    out: Path
    connected: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    timed: int = 0
    frames: int = 0

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode().split(maxsplit=2)
        if len(line) < 3 or line[0] != "connected":
            raise RuntimeError(f"client process {self.proc.pid} ended before connecting")
        self.connected, self.failed = int(line[1]), json.loads(line[2])

    async def follow(self, progress: asyncio.Event) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            _, timed, frames = line.split()
            self.timed, self.frames = int(timed), int(frames)
            progress.set()


class GatewayFailed(RuntimeError):
    """The gateway did not start or did not listen."""


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


def _log_tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


async def _flush_redis() -> None:
    import redis.asyncio

    r = redis.asyncio.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        await r.flushdb()
    finally:
        await r.aclose()


async def _wait_port(port: int, gateway: asyncio.subprocess.Process, log: Path,
                     seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gateway.returncode is not None:
            raise GatewayFailed(f"gateway exited with {gateway.returncode}: {_log_tail(log)}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.1)
    raise GatewayFailed(f"gateway did not listen on {port}: {_log_tail(log)}")


async def _stop(proc: asyncio.subprocess.Process, seconds: float) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_env(code: GatewayCode, tmp: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPULSE_")}
    env.update({
        "MLPULSE_AMQP_URL": AMQP_URL, "MLPULSE_REDIS_URL": f"redis://localhost:6379/{REDIS_DB}",
        "MLPULSE_SECRET": SECRET, "MLPULSE_HTTP_PORT": str(port),
        "MLPULSE_DATA_DIR": str(tmp / "data"), "MLPULSE_LOG_DIR": str(tmp / "logs"),
        "MLPULSE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(code.src),
    })
    return env


async def run_cell(code: GatewayCode, clients: int, workload: str, plan: Plan) -> Cell:
    """One gateway, `clients` connections over `plan.procs` processes, one workload."""
    cell = Cell(code.label, workload, clients)
    await _flush_redis()
    tmp = Path(tempfile.mkdtemp(prefix="mlpulse-wsbench-"))
    port = free_port()
    env = gateway_env(code, tmp, port)
    gw_log = _open_log(tmp / "gateway.log")
    gateway = await asyncio.create_subprocess_exec(
        *plan.taskset(gateway=True), sys.executable, "-m", "mlpulse", "gateway",
        env=env, stdout=gw_log, stderr=subprocess.STDOUT)
    children: list[ClientProc] = []
    followers: list[asyncio.Task[None]] = []
    publisher = Publisher()
    try:
        await _wait_port(port, gateway, tmp / "gateway.log")
        # The clients import the token helper of this tree: tokens are plain HS256 JWTs.
        client_env = {**env, "PYTHONPATH": str(REPO_ROOT / "src")}
        share = -(-clients // plan.procs)
        for p in range(plan.procs):
            first, count = p * share, min(share, clients - p * share)
            if count <= 0:
                break
            proc = await asyncio.create_subprocess_exec(
                *plan.taskset(gateway=False), sys.executable, __file__, "--client", str(port),
                str(first), str(count), str(tmp / f"client{p}.json"),
                env=client_env, stdout=asyncio.subprocess.PIPE)
            children.append(ClientProc(proc, tmp / f"client{p}.json"))
        await asyncio.gather(*(c.ready() for c in children))
        cell.connected = sum(c.connected for c in children)
        for c in children:
            for k, v in c.failed.items():
                cell.failed[k] = cell.failed.get(k, 0) + v
        await publisher.open()
        before = await gateway_counters(port)
        await _traffic(cell, gateway.pid, children, followers, publisher, plan)
        after = await gateway_counters(port)
        if RELAY_CPU in before and RELAY_CPU in after:
            cell.relay_cpu_s = after[RELAY_CPU] - before[RELAY_CPU]
            cell.fanout_cpu_s = after[FANOUT_CPU] - before[FANOUT_CPU]
            cell.relayed = after.get(RELAYED, 0.0) - before.get(RELAYED, 0.0)
        cell.rss_mib = status_kib(gateway.pid, "VmHWM") / 1024
    except RuntimeError as exc:  # the gateway did not start, a client process died
        cell.error = str(exc)
    finally:
        with contextlib.suppress(Exception):
            await publisher.close()
        await asyncio.gather(*(_stop(c.proc, 120) for c in children))
        for task in followers:
            task.cancel()
        await _stop(gateway, 30)
        gw_log.close()
    _gather_results(cell, children)
    if cell.error is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        cell.error += f" (logs in {tmp})"
    return cell


RELAY_CPU = "mlpulse_gateway_relay_cpu_seconds_total"
FANOUT_CPU = "mlpulse_gateway_fanout_cpu_seconds_total"
RELAYED = "mlpulse_gateway_relayed_total"


async def gateway_counters(port: int) -> dict[str, float]:
    """The gateway's relay and fan-out counters from its /metrics (summed over labels)."""
    import urllib.request

    from mlpulse.gateway.auth import issue_token

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Authorization": f"Bearer {issue_token(SECRET.encode(), 'bench-ops')}"})

    def scrape() -> str:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return cast(bytes, reply.read()).decode()

    values: dict[str, float] = {}
    for line in (await asyncio.to_thread(scrape)).splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in (RELAY_CPU, FANOUT_CPU, RELAYED):
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


async def _traffic(cell: Cell, gw_pid: int, children: list[ClientProc],
                   followers: list[asyncio.Task[None]], publisher: Publisher,
                   plan: Plan) -> None:
    """Publish, then wait until every expected message arrived; measure over that window."""
    progress = asyncio.Event()
    followers.extend(asyncio.create_task(c.follow(progress)) for c in children)
    await asyncio.sleep(2 * REPORT_EVERY)  # every process has reported its counts once
    others = [os.getpid(), *broker_pids()]
    client_pids = [c.proc.pid for c in children]
    frames0 = sum(c.frames for c in children)
    timed0 = sum(c.timed for c in children)
    cpu0, clients0, others0 = (cpu_seconds(gw_pid), [cpu_seconds(p) for p in client_pids],
                               sum(cpu_seconds(p) for p in others))
    cores0, wait0 = core_ticks(), runqueue_wait_seconds(gw_pid)
    t0 = time.monotonic()
    if cell.workload == "mixed":
        ticks, notes, cell.publish_s = await publisher.run(1.0, plan.seconds, cell.clients)
    else:
        ticks, notes, cell.publish_s = await publisher.run(plan.broadcast_rate, plan.seconds, 0)
    cell.published = ticks + notes * cell.clients
    # Every socket that was open gets each tick, and each its own user's notes.
    cell.expected = (ticks + notes) * cell.connected
    deadline = time.monotonic() + plan.timeout
    while sum(c.timed for c in children) - timed0 < cell.expected:
        left = deadline - time.monotonic()
        if left <= 0:
            cell.timed_out = True
            break
        progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), min(left, 1.0))
    cell.window_s = time.monotonic() - t0
    cell.gateway_cpu_s = cpu_seconds(gw_pid) - cpu0
    cell.gateway_wait_s = runqueue_wait_seconds(gw_pid) - wait0
    cell.client_cpu = [(cpu_seconds(p) - c0) / cell.window_s
                       for p, c0 in zip(client_pids, clients0, strict=True)]
    cell.rest_cpu = (sum(cpu_seconds(p) for p in others) - others0) / cell.window_s
    cell.core_busy = [(b1 - b0) / max(1, t1 - t0_)
                      for (b0, t0_), (b1, t1) in zip(cores0, core_ticks(), strict=True)]
    cell.messages = sum(c.frames for c in children) - frames0
    cell.delivered = sum(c.timed for c in children) - timed0


def _gather_results(cell: Cell, children: list[ClientProc]) -> None:
    lat: list[float] = []
    for c in children:
        try:
            doc = orjson.loads(c.out.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            cell.error = cell.error or f"client process {c.proc.pid} left no results"
            continue
        cell.held += doc["held"]
        cell.pings += doc["pings"]
        lat.extend(doc["lat"])
        for k, v in doc["closes"].items():
            cell.closes[k] = cell.closes.get(k, 0) + v
    lat.sort()
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    cell.p50_ms = None if p50 is None else 1000 * p50
    cell.p99_ms = None if p99 is None else 1000 * p99


async def run_all(codes: list[GatewayCode], levels: list[int], workloads: list[str],
                  plan: Plan) -> list[Cell]:
    """Every level and workload; with two gateways, both in turn, the first one alternating."""
    cells = []
    turn = 0
    for level in levels:
        for workload in workloads:
            order = codes if turn % 2 == 0 else codes[::-1]
            turn += 1
            for code in order:
                print(f"[ws] {code.label}: {level} clients, {workload} ...", file=sys.stderr,
                      flush=True)
                cell = await run_cell(code, level, workload, plan)
                print(f"[ws] {_summary(cell)}", file=sys.stderr, flush=True)
                cells.append(cell)
    return cells


def _summary(c: Cell) -> str:
    if c.error and not c.messages:
        return f"{c.gateway} {c.clients} {c.workload}: failed: {c.error}"
    us = c.us_per_delivery
    return (f"{c.gateway} {c.clients} {c.workload}: held {c.held}, delivered "
            f"{100 * c.delivered_share:.1f}% in {c.window_s:.1f} s (publishing "
            f"{c.publish_s:.1f} s), "
            f"{'n/a' if us is None else f'{us:.1f}'} us/delivery, p50 {_ms(c.p50_ms)} "
            f"p99 {_ms(c.p99_ms)} ms, clients CPU {_cores(c.client_cpu)}, "
            f"gateway CPU {100 * c.gateway_cpu_s / c.window_s:.0f}%, waited for a core "
            f"{100 * c.gateway_wait_s / c.window_s:.0f}%, "
            f"cores busy {' / '.join(f'{100 * b:.0f}%' for b in c.core_busy)}, "
            f"{c.pings} pings answered, closes {_counts(c.closes)}")


# ---------------------------------------------------------------- git worktree

def add_worktree(rev: str) -> Path:
    """A detached worktree of `rev` under /tmp, made afresh."""
    path = Path(tempfile.gettempdir()) / f"fanout-{rev}"
    if path.exists():
        remove_worktree(path)
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(path)],
                   check=False, capture_output=True)


def imported_from(code: GatewayCode) -> str:
    """Where a gateway started with this code imports `mlpulse` from (a sanity check)."""
    env = {**os.environ, "PYTHONPATH": str(code.src)}
    out = subprocess.run([sys.executable, "-c", "import mlpulse; print(mlpulse.__file__)"],
                         env=env, capture_output=True, text=True, check=True, cwd="/")
    return out.stdout.strip()


def prepare_vhost() -> None:
    """A RabbitMQ vhost of the benchmark's own."""
    subprocess.run(["rabbitmqctl", "add_vhost", VHOST], capture_output=True, check=False)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
                   capture_output=True, check=False)


# ---------------------------------------------------------------- report

def _split(c: Cell) -> str:
    """Relay CPU per relayed event and fan-out CPU per delivery, from the gateway's counters."""
    if c.relay_cpu_s is None or c.fanout_cpu_s is None or not c.relayed or not c.messages:
        return "n/a"
    return f"{1e6 * c.relay_cpu_s / c.relayed:.1f}, {1e6 * c.fanout_cpu_s / c.messages:.1f}"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}"


def _cores(shares: list[float]) -> str:
    if not shares:
        return "n/a"
    return f"max {100 * max(shares):.0f}%, sum {100 * sum(shares):.0f}%"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items())) or "none"


def report(cells: list[Cell], argv: list[str], plan: Plan, codes: list[GatewayCode]) -> str:
    """Markdown: the setting, one row per run, and new / old ratios when two gateways ran."""
    cores = os.cpu_count() or 1
    pinning = ("gateway under `taskset -c 0`; clients and publisher under "
               f"`taskset -c {' '.join(plan.taskset(gateway=False)[2:])}`, where they share "
               f"{'core 1' if cores == 2 else 'those cores'} with RabbitMQ, Redis and whatever "
               "else the kernel puts there (other benchmarks may run on either core)"
               if plan.pin else "not pinned: every process shares every core")
    lines = [
        "## WebSocket fan-out benchmark", "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc={cores}; {pinning}",
        f"- command: `{' '.join(['python', 'bench/fanout.py', *argv])}`",
        "- gateways: " + "; ".join(f"`{c.label}` from {c.src}" for c in codes),
        f"- workloads: mixed = every second one broadcast to all and one own message per "
        f"user; broadcast = {plan.broadcast_rate:g} broadcasts/s; {plan.seconds:g} s of "
        f"publishing, then up to {plan.timeout:g} s for the last messages",
        f"- {plan.procs} client processes; publish s = how long publishing took (the "
        f"plan: {plan.seconds:g} s less one round); window = first publish until every expected "
        "message arrived; gateway CPU per delivery = its user+sys CPU over the window / "
        "messages received in it (all text frames); latency = publish ts to receipt of "
        "ticks and notes; CPU shares are of one core; cores busy = each core's busy share "
        "over the window, by any process of the machine; gateway waited for a core = the "
        "time its threads were runnable while another process had the core "
        "(/proc/<pid>/task/*/schedstat), as a share of the window", "",
        "| gateway | workload | clients | held | delivered | publish s | window s "
        "| deliveries/s "
        "| p50 ms | p99 ms | gateway µs/delivery | of it: relay µs/event, fan-out µs/delivery "
        "| gateway CPU | gateway waited for a core "
        "| gateway peak RSS MiB "
        "| client procs CPU | publisher+broker CPU | cores busy | failed handshakes "
        "| closes |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|---|---|---|",
    ]
    for c in cells:
        if c.error and not c.messages:
            lines.append(f"| {c.gateway} | {c.workload} | {c.clients:,} | failed: {c.error} "
                         + "| " * 16 + "|")
            continue
        us = c.us_per_delivery
        lines.append(
            f"| {c.gateway} | {c.workload} | {c.clients:,} | {c.held:,} "
            f"| {100 * c.delivered_share:.1f}%{' (timeout)' if c.timed_out else ''} "
            f"| {c.publish_s:.1f} | {c.window_s:.1f} | {c.messages / c.window_s:,.0f} "
            f"| {_ms(c.p50_ms)} "
            f"| {_ms(c.p99_ms)} | {'n/a' if us is None else f'{us:.1f}'} "
            f"| {_split(c)} "
            f"| {100 * c.gateway_cpu_s / c.window_s:.0f}% "
            f"| {100 * c.gateway_wait_s / c.window_s:.0f}% | {c.rss_mib:,.0f} "
            f"| {_cores(c.client_cpu)} | {100 * c.rest_cpu:.0f}% "
            f"| {' / '.join(f'{100 * b:.0f}%' for b in c.core_busy)} | {_counts(c.failed)} "
            f"| {_counts(c.closes)} |")
    if len(codes) == 2:
        lines.extend(_ratios(cells, codes))
    return "\n".join(lines) + "\n"


def _ratios(cells: list[Cell], codes: list[GatewayCode]) -> list[str]:
    old, new = codes
    lines = ["", f"New ÷ old: `{new.label}` ÷ `{old.label}` (below 1 is better).", "",
             "| workload | clients | CPU/delivery new ÷ old | p99 new ÷ old |",
             "|---|--:|--:|--:|"]
    by_key = {(c.gateway, c.workload, c.clients): c for c in cells}
    for c in cells:
        if c.gateway != new.label or (o := by_key.get((old.label, c.workload, c.clients))) is None:
            continue
        a, b = c.us_per_delivery, o.us_per_delivery
        cpu = f"{a / b:.2f}" if a is not None and b else "n/a"
        p99 = f"{c.p99_ms / o.p99_ms:.2f}" if c.p99_ms is not None and o.p99_ms else "n/a"
        lines.append(f"| {c.workload} | {c.clients:,} | {cpu} | {p99} |")
    return lines


# ---------------------------------------------------------------- entry point

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--levels", default="1000,5000,10000",
                        help="client counts, e.g. 1000,10000")
    parser.add_argument("--seconds", type=float, default=20, help="seconds of publishing")
    parser.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both")
    parser.add_argument("--broadcast-rate", type=float, default=10.0,
                        help="broadcasts a second in the broadcast workload")
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds after the last publish to wait for the last messages")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                        help="gateway on core 0, the rest on cores 1- (default: with >= 2 CPUs)")
    revs = parser.add_mutually_exclusive_group()
    revs.add_argument("--compare-rev", metavar="REV",
                      help="also run the gateway of git revision REV, side by side")
    revs.add_argument("--gateway-rev", metavar="REV",
                      help="run only the gateway of git revision REV")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    return parser.parse_args()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, first, count, out = sys.argv[2:6]
        uvloop.run(_client_main(int(port), int(first), int(count), Path(out)))
        return
    args = parse_args()
    cores = os.cpu_count() or 1
    pin = args.pin if args.pin is not None else cores >= 2
    if pin and cores < 2:
        sys.exit("--pin needs at least 2 CPUs")
    plan = Plan(args.seconds, args.broadcast_rate, args.procs, args.timeout, pin)
    if pin:
        os.sched_setaffinity(0, range(1, cores))  # the publisher, like the clients
    levels = [int(x) for x in args.levels.split(",")]
    workloads = list(WORKLOADS) if args.workload == "both" else [args.workload]
    prepare_vhost()
    worktree: Path | None = None
    current = GatewayCode("working tree", REPO_ROOT / "src")
    try:
        rev = args.compare_rev or args.gateway_rev
        if rev:
            worktree = add_worktree(rev)
            other = GatewayCode(rev, worktree / "src")
            codes = [other, current] if args.compare_rev else [other]
        else:
            codes = [current]
        for code in codes:
            print(f"[ws] {code.label}: mlpulse from {imported_from(code)}", file=sys.stderr)
        cells = uvloop.run(run_all(codes, levels, workloads, plan))
    finally:
        if worktree is not None:
            remove_worktree(worktree)
    text = report(cells, sys.argv[1:], plan, codes)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
