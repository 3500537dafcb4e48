"""The hub: every socket has a bounded outbox; one slow reader never holds up the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocket

from mlpulse.gateway.auth import User

log = logging.getLogger(__name__)

CONNECTIONS = Gauge("mlpulse_gateway_connections", "Open WebSocket connections")
DELIVERIES = Counter("mlpulse_gateway_deliveries_total", "Messages queued to sockets")
DROPS = Counter("mlpulse_gateway_slow_client_drops_total",
                "Sockets closed because their outbox was full")

# Close codes: 1013 "try again later" for a reader that fell behind.
CLOSE_TOO_SLOW = 1013


class Client:
    """One WebSocket connection and its outbox."""

    __slots__ = ("dropped", "outbox", "seq", "user", "ws")

    def __init__(self, ws: WebSocket, user: User, limit: int) -> None:
        self.ws = ws
        self.user = user
        self.outbox: asyncio.Queue[str] = asyncio.Queue(limit)
        self.seq = 0
        self.dropped = asyncio.Event()

    async def pump(self) -> None:
        """Send queued messages in order, numbering them so the client can see gaps."""
        while True:
            payload = await self.outbox.get()
            self.seq += 1
            # The payload is one JSON object serialised once for everybody; the
            # per-connection sequence number is spliced in front of its first key.
            await self.ws.send_text(f'{{"seq":{self.seq},{payload[1:]}' if payload != "{}"
                                    else f'{{"seq":{self.seq}}}')


class Hub:
    """Who is connected, and delivery to everyone or to one user's sockets."""

    def __init__(self, outbox_limit: int) -> None:
        self.outbox_limit = outbox_limit
        self.clients: set[Client] = set()
        self.by_user: dict[str, set[Client]] = {}

    def connections_of(self, user: str) -> int:
        """How many sockets a user has open."""
        return len(self.by_user.get(user, ()))

    def add(self, ws: WebSocket, user: User) -> Client:
        """Register a new connection."""
        client = Client(ws, user, self.outbox_limit)
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
        try:
            client.outbox.put_nowait(payload)
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
