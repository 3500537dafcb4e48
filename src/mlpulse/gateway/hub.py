"""The hub: every socket has a bounded outbox; one slow reader never holds up the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidState

from mlpulse.gateway.auth import User
from mlpulse.gateway.protocols import BoundedWebSocketProtocol

log = logging.getLogger(__name__)

CONNECTIONS = Gauge("mlpulse_gateway_connections", "Open WebSocket connections")
DELIVERIES = Counter("mlpulse_gateway_deliveries_total", "Messages queued to sockets")
DIRECT = Counter("mlpulse_gateway_direct_writes_total",
                 "Messages written to a socket at once, without waiting in its outbox")
DROPS = Counter("mlpulse_gateway_slow_client_drops_total",
                "Sockets closed because their outbox was full")

# Close codes: 1013 "try again later" for a reader that fell behind.
CLOSE_TOO_SLOW = 1013


class FrameWriter:
    """Writes frames straight to one connection of the gateway's sans-I/O WebSocket protocol.

    Going through ASGI costs a coroutine chain and a task wake-up per message and per
    socket; a broadcast to thousands of sockets pays that thousands of times. The frame
    is still built by the connection's own `websockets` protocol object, which keeps
    its state checks; only the ASGI hop is skipped.
    """

    __slots__ = ("proto",)

    def __init__(self, proto: BoundedWebSocketProtocol) -> None:
        self.proto = proto

    @classmethod
    def of(cls, send: Callable[..., Any] | None) -> FrameWriter | None:
        """The wire under an ASGI `send`, when it is the gateway's sans-I/O protocol."""
        proto = getattr(send, "__self__", None)
        if isinstance(proto, BoundedWebSocketProtocol) and not proto.conn.extensions:
            return cls(proto)
        return None

    def closed(self) -> bool:
        """Whether nothing more can be sent."""
        return bool(self.proto.close_sent or self.proto.transport.is_closing())

    def ready(self) -> bool:
        """Open, and the transport is not pushing back."""
        return self.proto.writable.is_set() and not self.closed()

    async def drained(self) -> None:
        """Wait until the transport accepts writes again."""
        await self.proto.writable.wait()
        if self.closed():
            raise ConnectionResetError("socket closed")

    def write(self, text: str) -> None:
        """Frame and write one text message."""
        conn = self.proto.conn
        try:
            conn.send_text(text.encode())
        except InvalidState as exc:
            raise ConnectionResetError("socket closed") from exc
        self.proto.transport.write(b"".join(conn.data_to_send()))

    def close(self, code: int, reason: str) -> None:
        """Send a close frame now, behind what is buffered, however full the buffer is."""
        self.proto.close_now(code, reason)


class Client:
    """One WebSocket connection and its outbox."""

    __slots__ = ("backlog", "dropped", "outbox", "seq", "user", "wire", "ws")

    def __init__(self, ws: WebSocket, user: User, limit: int,
                 wire: FrameWriter | None = None) -> None:
        self.ws = ws
        self.user = user
        self.wire = wire
        self.outbox: asyncio.Queue[str] = asyncio.Queue(limit)
        self.backlog = 0  # queued, or taken by the pump and not yet written
        self.seq = 0
        self.dropped = asyncio.Event()

    def number(self, payload: str) -> str:
        """The payload with the next sequence number spliced in front of its first key.

        The payload is one JSON object serialised once for everybody."""
        self.seq += 1
        return f'{{"seq":{self.seq},{payload[1:]}' if payload != "{}" else f'{{"seq":{self.seq}}}'

    def write_now(self, payload: str) -> bool:
        """Write at once when nothing is waiting and the socket takes it; else False."""
        wire = self.wire
        if wire is None or self.backlog or not wire.ready():
            return False
        try:
            wire.write(self.number(payload))
        except ConnectionResetError:
            return False  # the reader notices the close; the outbox takes it meanwhile
        DIRECT.inc()
        return True

    async def close(self, code: int, reason: str) -> None:
        """Close with `code`. Through the wire the frame goes out even past a full buffer;
        through ASGI that wait is bounded, as a reader that stopped may never let it through."""
        if self.wire is not None:
            self.wire.close(code, reason)
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), 2.0)

    async def pump(self) -> None:
        """Send what had to wait, in order."""
        while True:
            payload = await self.outbox.get()
            if self.wire is not None:
                await self.wire.drained()
                self.wire.write(self.number(payload))
            else:
                await self.ws.send_text(self.number(payload))
            self.backlog -= 1


class Hub:
    """Who is connected, and delivery to everyone or to one user's sockets."""

    def __init__(self, outbox_limit: int) -> None:
        self.outbox_limit = outbox_limit
        self.clients: set[Client] = set()
        self.by_user: dict[str, set[Client]] = {}

    def connections_of(self, user: str) -> int:
        """How many sockets a user has open."""
        return len(self.by_user.get(user, ()))

    def add(self, ws: WebSocket, user: User, wire: FrameWriter | None = None) -> Client:
        """Register a new connection."""
        client = Client(ws, user, self.outbox_limit, wire)
        self.clients.add(client)
        self.by_user.setdefault(user.name, set()).add(client)
        CONNECTIONS.set(len(self.clients))
        return client

    def remove(self, client: Client) -> None:
        """Forget a connection."""
        self.clients.discard(client)
        mine = self.by_user.get(client.user.name)
        if mine is not None:
            mine.discard(client)
            if not mine:
                del self.by_user[client.user.name]
        CONNECTIONS.set(len(self.clients))

    def broadcast(self, payload: str) -> int:
        """Queue one serialised message for every connection."""
        return self._offer(self.clients, payload)

    def send_to(self, user: str, payload: str) -> int:
        """Queue one serialised message for every connection of `user` only."""
        return self._offer(self.by_user.get(user, ()), payload)

    @staticmethod
    def offer(client: Client, payload: str) -> bool:
        """Queue for one connection; a full outbox marks the client as too slow."""
        if client.dropped.is_set():
            return False
        if client.write_now(payload):
            return True
        try:
            client.outbox.put_nowait(payload)
            client.backlog += 1
        except asyncio.QueueFull:
            DROPS.inc()
            log.info("dropping a slow client of %s (outbox full)", client.user.name)
            client.dropped.set()
            return False
        return True

    def _offer(self, targets: Iterable[Client], payload: str) -> int:
        sent = sum(1 for c in tuple(targets) if self.offer(c, payload))
        DELIVERIES.inc(sent)
        return sent
