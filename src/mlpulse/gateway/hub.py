"""The hub: streams with positions, each message framed once, and one write per socket a tick.

Every message for browsers belongs to a stream: `broadcast` (everyone) or one user's own
stream. A stream numbers its messages with an offset within an epoch, as Centrifugo does,
so the position travels in the message itself and one WebSocket frame serves every socket
that gets it: the frame is built once, when the message is published, and the same bytes
go to each socket. A stream keeps its latest frames, so a client that reconnects says where
it was and gets what it missed, or is told it is too far behind and gets a fresh snapshot.

Messages published in one turn of the event loop are written together at its end: a socket
gets one write for all of them (the broadcast frames first, then its user's), which is one
system call however many messages there were.

A socket that stops reading is dropped with 1013 once `outbox_limit` messages have waited
for it beyond the transport's own buffer; it never holds up the rest.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import orjson
from prometheus_client import Counter, Gauge
from websockets.frames import Frame, Opcode

from mlpulse.gateway.auth import User

log = logging.getLogger(__name__)

CONNECTIONS = Gauge("mlpulse_gateway_connections", "Open WebSocket connections")
DELIVERIES = Counter("mlpulse_gateway_deliveries_total", "Messages written to sockets")
WRITES = Counter("mlpulse_gateway_socket_writes_total",
                 "Writes to sockets (one carries every message a socket got in a tick)")
DROPS = Counter("mlpulse_gateway_slow_client_drops_total",
                "Sockets closed because too many messages waited for them")
RECOVERIES = Counter("mlpulse_gateway_recoveries_total",
                     "Reconnecting clients by stream and outcome", ["stream", "outcome"])
FANOUT_SECONDS = Counter("mlpulse_gateway_fanout_cpu_seconds_total",
                         "CPU time spent writing published messages to sockets")

# Close codes: 1013 "try again later" for a reader that fell behind.
CLOSE_TOO_SLOW = 1013

BROADCAST = "broadcast"
USER = "user"
# What a stream keeps for reconnecting clients, at most.
BROADCAST_KEEP, BROADCAST_KEEP_BYTES = 1024, 4 * 2**20
USER_KEEP, USER_KEEP_BYTES = 128, 256 * 2**10
# A user's stream outlives its last socket this long, so a reconnect within it recovers;
# at most this many such idle streams are kept (the oldest go first).
IDLE_STREAM_SECONDS = 600.0
IDLE_STREAMS_MAX = 10_000


def text_frame(payload: bytes) -> bytes:
    """One unmasked text frame, as a server sends it (no extensions are negotiated)."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


class Socket(Protocol):
    """What the hub needs of a connection."""

    user: User

    def write(self, data: bytes, messages: int) -> bool:
        """Write frames holding `messages` messages; False if the socket is closing."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client was in a stream: after `offset` within `epoch`."""

    epoch: str
    offset: int

    @classmethod
    def parse(cls, text: str | None) -> Position | None:
        """`EPOCH:OFFSET` as a client sends it; None for anything else."""
        if not text or len(text) > 80:
            return None
        epoch, _, offset = text.rpartition(":")
        if not epoch or not (offset.isascii() and offset.isdigit()):
            return None
        return cls(epoch, int(offset))


class Stream:
    """Numbered messages, framed once, with the latest kept for recovery."""

    __slots__ = ("epoch", "keep", "keep_bytes", "kept", "kept_bytes", "name",
                 "offset", "prefix")

    def __init__(self, name: str, epoch: str, keep: int, keep_bytes: int) -> None:
        self.name = name
        self.epoch = epoch
        self.offset = 0
        self.keep, self.keep_bytes = keep, keep_bytes
        self.kept: deque[tuple[int, bytes]] = deque()
        self.kept_bytes = 0
        self.prefix = f'{{"stream":"{name}","offset":'.encode()

    def publish(self, payload: str | bytes) -> bytes:
        """The next position spliced in front of a JSON object's first key, as one frame."""
        if isinstance(payload, str):
            payload = payload.encode()
        self.offset += 1
        body = payload[1:].lstrip()
        sep = b"" if body.startswith(b"}") else b","
        frame = text_frame(b"%s%d%s%s" % (self.prefix, self.offset, sep, body))
        self.kept.append((self.offset, frame))
        self.kept_bytes += len(frame)
        while self.kept and (len(self.kept) > self.keep or self.kept_bytes > self.keep_bytes):
            self.kept_bytes -= len(self.kept.popleft()[1])
        return frame

    def since(self, at: Position | None) -> list[bytes] | None:
        """The frames after `at`, or None when they are not all kept (or `at` is of another
        epoch, or ahead of this stream)."""
        if at is None or at.epoch != self.epoch or at.offset > self.offset:
            return None
        missed = self.offset - at.offset
        if missed == 0:
            return []
        if missed > len(self.kept):
            return None
        return [frame for _, frame in list(self.kept)[-missed:]]

    def where(self) -> dict[str, object]:
        return {"epoch": self.epoch, "offset": self.offset}


class Hub:
    """Who is connected; streams; delivery to everyone or to one user's sockets."""

    def __init__(self, outbox_limit: int, epoch: str | None = None) -> None:
        self.outbox_limit = outbox_limit
        self.epoch = epoch or secrets.token_hex(4)
        self.clients: set[Socket] = set()
        self.by_user: dict[str, set[Socket]] = {}
        self.broadcasts = Stream(BROADCAST, f"{self.epoch}-0", BROADCAST_KEEP,
                                 BROADCAST_KEEP_BYTES)
        self.streams: dict[str, Stream] = {}  # users' own
        # Users whose stream has no socket, and since when, the longest idle first.
        self.idle: OrderedDict[str, float] = OrderedDict()
        self.made = 0
        self.joining: dict[str, int] = {}  # sockets accepted and not yet joined, by user
        self.pending: list[bytes] = []  # broadcast frames of this tick
        self.pending_users: dict[str, list[bytes]] = {}  # users' frames of this tick
        self.flush_due = False

    # ------------------------------------------------------------------ connections

    def connections_of(self, user: str) -> int:
        """How many sockets a user has open, those still joining included."""
        return len(self.by_user.get(user, ())) + self.joining.get(user, 0)

    def hold(self, user: str) -> Stream:
        """A user's stream for a socket about to join: made if need be, and idle (so it is
        forgotten in time) while the user has no socket."""
        stream = self.stream_of(user, make=True)
        assert stream is not None
        if user not in self.by_user and user not in self.idle:
            self.idle[user] = time.monotonic()
        return stream

    def add(self, sock: Socket) -> None:
        """Register a socket; from now on it gets every message of its streams."""
        self.flush()  # what was published before it joined is not its to get twice
        self.clients.add(sock)
        name = sock.user.name
        self.by_user.setdefault(name, set()).add(sock)
        self.idle.pop(name, None)
        self.stream_of(name, make=True)
        CONNECTIONS.set(len(self.clients))

    def remove(self, sock: Socket) -> None:
        """Forget a socket; its user's stream idles once the last one has gone."""
        if sock not in self.clients:
            return
        self.clients.discard(sock)
        name = sock.user.name
        mine = self.by_user.get(name)
        if mine is not None:
            mine.discard(sock)
            if not mine:
                del self.by_user[name]
                if name in self.streams:
                    self.idle[name] = time.monotonic()
                    self.sweep()
        CONNECTIONS.set(len(self.clients))

    def stream_of(self, user: str, make: bool = False) -> Stream | None:
        """A user's stream; made (in a new epoch) when asked to and there is none."""
        stream = self.streams.get(user)
        if stream is None and make:
            self.made += 1
            stream = self.streams[user] = Stream(USER, f"{self.epoch}-{self.made}",
                                                 USER_KEEP, USER_KEEP_BYTES)
        return stream

    def sweep(self, now: float | None = None) -> None:
        """Forget idle streams past their time or past the cap, the longest idle first."""
        now = time.monotonic() if now is None else now
        idle = self.idle
        while idle:
            name, since = next(iter(idle.items()))
            if len(idle) <= IDLE_STREAMS_MAX and now - since < IDLE_STREAM_SECONDS:
                break
            del idle[name]
            self.streams.pop(name, None)

    # ------------------------------------------------------------------ publishing

    def broadcast(self, payload: str | bytes) -> int:
        """Publish one serialised JSON object to everyone; how many sockets will get it."""
        self.pending.append(self.broadcasts.publish(payload))
        self._flush_soon()
        return len(self.clients)

    def send_to(self, user: str, payload: str | bytes) -> int:
        """Publish one serialised JSON object to `user`'s stream; how many sockets will get
        it. A user with neither a socket nor a recent one has no stream: the message is
        only in the history then."""
        stream = self.stream_of(user)
        if stream is None:
            return 0
        self.pending_users.setdefault(user, []).append(stream.publish(payload))
        self._flush_soon()
        return self.connections_of(user)

    def _flush_soon(self) -> None:
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what was published this tick: one write per socket that gets anything."""
        self.flush_due = False
        if not self.pending and not self.pending_users:
            return
        started = time.thread_time()
        shared, self.pending = self.pending, []
        own, self.pending_users = self.pending_users, {}
        delivered = writes = 0
        if shared:
            everyone = b"".join(shared) if len(shared) > 1 else shared[0]
            for sock in tuple(self.clients):
                mine = own.get(sock.user.name)
                if mine is None:
                    ok = sock.write(everyone, len(shared))
                    count = len(shared)
                else:
                    ok = sock.write(everyone + b"".join(mine), len(shared) + len(mine))
                    count = len(shared) + len(mine)
                writes += 1
                delivered += count if ok else 0
        else:
            for user, frames in own.items():
                data = b"".join(frames) if len(frames) > 1 else frames[0]
                for sock in tuple(self.by_user.get(user, ())):
                    writes += 1
                    delivered += len(frames) if sock.write(data, len(frames)) else 0
        DELIVERIES.inc(delivered)
        WRITES.inc(writes)
        FANOUT_SECONDS.inc(time.thread_time() - started)

    # ------------------------------------------------------------------ joining

    def welcome(self, sock: Socket, broadcast_at: Position | None, user_at: Position | None,
                snapshot: Callable[[], str], history: Iterable[str] = (),
                history_at: Position | None = None) -> None:
        """Register `sock` and write what it starts with, in one step of the event loop, so
        nothing published meanwhile is missed or repeated:

        - `hello`, saying where each stream stands and whether the client's own positions
          could be resumed;
        - for `broadcast`, the frames the client missed, or a fresh full snapshot;
        - for its user's stream, the frames it missed, or the user's latest messages from
          the history (`history`, not numbered, read when the user's stream stood at
          `history_at`) and the frames published since that read.
        """
        self.add(sock)
        own = self.stream_of(sock.user.name, make=True)
        assert own is not None
        missed_b = self.broadcasts.since(broadcast_at)
        missed_u = own.since(user_at)
        self._count(BROADCAST, broadcast_at, missed_b)
        self._count(USER, user_at, missed_u)
        user_from = user_at.offset if missed_u is not None and user_at else own.offset
        since_history: list[bytes] = []
        if missed_u is None and history_at is not None:
            # Published while the history was read: the read may or may not hold them
            # (the history is written in bursts), so they are sent too; at least once.
            late = own.since(history_at)
            if late is not None:
                since_history, user_from = late, history_at.offset
        hello = {
            "type": "hello", "ts": time.time(),
            "streams": {
                BROADCAST: {"epoch": self.broadcasts.epoch,
                            "offset": broadcast_at.offset if missed_b is not None
                            and broadcast_at else self.broadcasts.offset,
                            "recovered": missed_b is not None},
                USER: {"epoch": own.epoch, "offset": user_from,
                       "recovered": missed_u is not None},
            },
        }
        parts = [text_frame(orjson.dumps(hello))]
        parts.extend(missed_b if missed_b is not None else [text_frame(snapshot().encode())])
        if missed_u is not None:
            parts.extend(missed_u)
        else:
            parts.extend(text_frame(m.encode()) for m in history)
            parts.extend(since_history)
        sock.write(b"".join(parts), len(parts))

    @staticmethod
    def _count(stream: str, at: Position | None, missed: list[bytes] | None) -> None:
        if at is not None:
            RECOVERIES.labels(stream, "resumed" if missed is not None else "too_old").inc()


def direct(payload: str) -> bytes:
    """A frame for one socket only, outside every stream (a pong, say)."""
    return text_frame(payload.encode())
