"""The hub's routing and bounds in-process, with stand-ins for sockets (pure logic).

tests/gateway/test_hub.py covers the same edges end to end, through a real gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mlpulse.gateway.auth import User
from mlpulse.gateway.hub import Client, Hub

WAIT = 2.0


class FakeSocket:
    """Stands in for a Starlette WebSocket: keeps the text frames sent to it."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[str] = asyncio.Queue()

    async def send_text(self, text: str) -> None:
        self.frames.put_nowait(text)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.frames.put_nowait(f"closed {code}")

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            doc: dict[str, Any] = json.loads(await self.frames.get())
        return doc

    def pending(self) -> int:
        return self.frames.qsize()


class FakeWriter:
    """Stands in for the hub's direct frame writer: a transport that may push back."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.wrote = asyncio.Event()

    def closed(self) -> bool:
        return False

    def ready(self) -> bool:
        return self.writable.is_set()

    async def drained(self) -> None:
        await self.writable.wait()

    def write(self, text: str) -> None:
        self.frames.append(text)
        self.wrote.set()

    async def until(self, count: int) -> None:
        """Wait until `count` frames were written."""
        async with asyncio.timeout(WAIT):
            while len(self.frames) < count:
                self.wrote.clear()
                await self.wrote.wait()

    def close(self, code: int, reason: str) -> None:
        self.frames.append(f"closed {code}")


def message(n: int) -> str:
    """One payload, serialised once for every receiver, as the relay does."""
    return json.dumps({"type": "note", "data": {"n": n}})


@pytest.fixture
async def pumped() -> AsyncIterator[Callable[[Client], None]]:
    """Start a client's pump; every pump is stopped after the test, and none may have died."""
    tasks: list[asyncio.Task[None]] = []

    def start(client: Client) -> None:
        tasks.append(asyncio.create_task(client.pump()))

    yield start
    died = [t for t in tasks if t.done()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not died, [t.exception() for t in died]


def connect(hub: Hub, name: str) -> tuple[Client, FakeSocket]:
    sock = FakeSocket()
    return hub.add(sock, User(name)), sock  # type: ignore[arg-type]


async def test_a_broadcast_reaches_every_client_in_order(
        pumped: Callable[[Client], None]) -> None:
    hub = Hub(outbox_limit=8)
    clients = [connect(hub, name) for name in ("alice", "alice", "bob")]
    for client, _ in clients:
        pumped(client)
    for n in range(5):
        assert hub.broadcast(message(n)) == 3
    assert hub.broadcast("{}") == 3
    for _, sock in clients:
        got = [await sock.next() for _ in range(6)]
        assert [m["seq"] for m in got] == [1, 2, 3, 4, 5, 6]
        assert [m["data"]["n"] for m in got[:5]] == list(range(5))
        assert got[5] == {"seq": 6}


async def test_send_to_reaches_only_that_users_clients(
        pumped: Callable[[Client], None]) -> None:
    hub = Hub(outbox_limit=8)
    (a1, sock_a1), (a2, sock_a2), (b, sock_b) = (connect(hub, n)
                                                 for n in ("alice", "alice", "bob"))
    for client in (a1, a2, b):
        pumped(client)
    assert hub.send_to("alice", message(1)) == 2
    assert hub.send_to("nobody", message(2)) == 0
    assert hub.broadcast(message(3)) == 3
    for sock in (sock_a1, sock_a2):
        assert [(await sock.next())["data"]["n"] for _ in range(2)] == [1, 3]
    # Bob's first frame is the broadcast that came after Alice's message: hers never
    # reached him.
    first = await sock_b.next()
    assert first["seq"] == 1
    assert first["data"]["n"] == 3
    assert sock_b.pending() == 0


async def test_a_full_outbox_drops_that_client_and_the_others_get_everything(
        pumped: Callable[[Client], None]) -> None:
    limit, total = 4, 20
    hub = Hub(outbox_limit=limit)
    slow, _ = connect(hub, "slow")  # never pumped: a reader that stopped reading
    fast, sock = connect(hub, "fast")
    pumped(fast)
    reached = []
    for n in range(total):
        reached.append(hub.broadcast(message(n)))
        assert slow.dropped.is_set() == (n >= limit)
        assert (await sock.next())["data"]["n"] == n
    # Both until the slow client's outbox was full, then only the fast one.
    assert reached == [2] * limit + [1] * (total - limit)
    assert slow.outbox.qsize() == limit
    assert not Hub.offer(slow, message(total))
    assert not fast.dropped.is_set()


async def test_remove_forgets_a_client(pumped: Callable[[Client], None]) -> None:
    hub = Hub(outbox_limit=8)
    (gone, gone_sock), (kept, kept_sock) = connect(hub, "alice"), connect(hub, "alice")
    pumped(gone)
    pumped(kept)
    hub.remove(gone)
    assert gone not in hub.clients
    assert hub.connections_of("alice") == 1
    assert hub.broadcast(message(1)) == 1
    assert hub.send_to("alice", message(2)) == 1
    assert [(await kept_sock.next())["data"]["n"] for _ in range(2)] == [1, 2]
    assert gone_sock.pending() == 0
    hub.remove(gone)  # a second remove is harmless
    hub.remove(kept)
    assert hub.connections_of("alice") == 0
    assert hub.broadcast(message(3)) == 0


def test_connections_of_counts_each_users_sockets() -> None:
    hub = Hub(outbox_limit=8)
    assert hub.connections_of("alice") == 0
    alice = [connect(hub, "alice")[0] for _ in range(3)]
    connect(hub, "bob")
    assert (hub.connections_of("alice"), hub.connections_of("bob")) == (3, 1)
    hub.remove(alice[0])
    assert (hub.connections_of("alice"), hub.connections_of("bob")) == (2, 1)
    assert len(hub.clients) == 3


async def test_direct_writes_and_queued_ones_keep_one_order(
        pumped: Callable[[Client], None]) -> None:
    hub = Hub(outbox_limit=8)
    writer = FakeWriter()
    client = hub.add(FakeSocket(), User("alice"), writer)  # type: ignore[arg-type]
    assert hub.broadcast(message(0)) == 1  # written at once
    writer.writable.clear()  # the transport pushes back: messages wait in the outbox
    hub.broadcast(message(1))
    hub.broadcast(message(2))
    writer.writable.set()
    # Writable again, but two still wait: this one must queue behind them.
    hub.broadcast(message(3))
    assert len(writer.frames) == 1
    pumped(client)
    await writer.until(4)
    hub.broadcast(message(4))
    assert len(writer.frames) == 5, "with nothing waiting, a message is written at once"
    got = [json.loads(f) for f in writer.frames]
    assert [m["data"]["n"] for m in got] == list(range(5))
    assert [m["seq"] for m in got] == list(range(1, 6))
