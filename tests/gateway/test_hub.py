"""Routing to users, broadcast to all, slow readers dropped, several gateways, clean stop."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pika
import websockets

from tests.conftest import Env
from tests.gateway.conftest import Gateway, close_of, token


async def collect(ws: Any, until: Callable[[list[dict[str, Any]]], bool],
                  seconds: float = 20) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def run() -> None:
        while not until(got):
            got.append(json.loads(await ws.recv()))

    await asyncio.wait_for(run(), seconds)
    return got


def own(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] not in ("hello", "snapshot", "pong")]


def publish_many(env: Env, items: list[tuple[str, dict[str, Any]]]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    ch = conn.channel()
    ch.exchange_declare("mlpulse.events", exchange_type="topic", durable=True)
    for key, doc in items:
        ch.basic_publish("mlpulse.events", key, json.dumps(doc))
    conn.close()


async def test_users_get_their_own_messages_and_broadcasts_only(
        env: Env, gateway: Gateway) -> None:
    async with websockets.connect(f"{gateway.ws}?token={token('alice')}") as a, \
            websockets.connect(f"{gateway.ws}?token={token('bob')}") as b:
        # Hello and the snapshot, then a pong: a socket answers pings only once it has
        # joined its streams, so nothing published below is replayed too.
        for ws in (a, b):
            await ws.recv()
            await ws.send('{"type": "ping"}')
            await collect(ws, lambda g: any(m["type"] == "pong" for m in g))
        items = []
        for i in range(300):
            for who in ("alice", "bob"):
                items.append((f"user.{who}", {"type": "note", "ts": 1.0,
                                              "data": {"n": i, "to": who}}))
            if i % 6 == 0:
                items.append(("broadcast", {"type": "news", "ts": 1.0, "data": {"n": i}}))
        await asyncio.to_thread(publish_many, env, items)
        expected = 300 + 50
        got_a = await collect(a, lambda g: len(own(g)) >= expected)
        got_b = await collect(b, lambda g: len(own(g)) >= expected)
    for got, me in ((got_a, "alice"), (got_b, "bob")):
        mine = own(got)
        notes = [m for m in mine if m["type"] == "note"]
        assert [m["data"]["n"] for m in notes] == list(range(300))
        assert all(m["data"]["to"] == me for m in notes), "a message for another user leaked"
        assert len([m for m in mine if m["type"] == "news"]) == 50
        for stream in ("broadcast", "user"):
            offsets = [m["offset"] for m in got if m.get("stream") == stream]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), \
                f"gap in the {stream} stream"
        assert len([m for m in got if m.get("stream") == "user"]) == 300
    # A reconnecting user gets their recent own messages back, and only theirs.
    async with websockets.connect(f"{gateway.ws}?token={token('bob')}") as b2:
        again = await collect(b2, lambda g: len(own(g)) >= 20)
    assert all(m["data"]["to"] == "bob" for m in own(again))
    # The stored history is bounded and expires.
    client = env.redis()
    try:
        assert client.zcard("mlpulse:history:bob") == 50
        assert 0 < client.ttl("mlpulse:history:bob") <= 7 * 86400
    finally:
        client.close()


def numbered(msgs: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """Stream, offset and `data.n` of the messages that belong to a stream."""
    return [(m["stream"], m["offset"], m["data"]["n"]) for m in msgs if "stream" in m
            and m["type"] != "snapshot"]


async def test_a_reconnect_resumes_its_streams_and_gets_only_what_it_missed(
        env: Env, gateway: Gateway) -> None:
    url = f"{gateway.ws}?token={token('carol')}"

    def burst(first: int) -> list[tuple[str, dict[str, Any]]]:
        return [("user.carol", {"type": "note", "ts": 1.0, "data": {"n": first}}),
                ("broadcast", {"type": "news", "ts": 1.0, "data": {"n": first + 1}}),
                ("user.carol", {"type": "note", "ts": 1.0, "data": {"n": first + 2}})]

    async with websockets.connect(url) as witness:
        async with websockets.connect(url) as ws:
            await asyncio.to_thread(publish_many, env, burst(0))
            seen = await collect(ws, lambda g: len(numbered(g)) >= 3)
        hello = seen[0]["streams"]
        where = {name: [o for s, o, _ in numbered(seen) if s == name][-1]
                 for name in ("broadcast", "user")}
        # Published while that socket is away; the witness shows the gateway has them.
        await asyncio.to_thread(publish_many, env, burst(10))
        await collect(witness, lambda g: any(n == 12 for *_, n in numbered(g)))
        resume = (f"&broadcast={hello['broadcast']['epoch']}:{where['broadcast']}"
                  f"&user={hello['user']['epoch']}:{where['user']}")
        async with websockets.connect(url + resume) as again:
            got = await collect(again, lambda g: len(numbered(g)) >= 3)
            await again.send('{"type": "ping"}')
            got += await collect(again, lambda g: any(m["type"] == "pong" for m in g))
    assert got[0]["type"] == "hello"
    assert all(s["recovered"] for s in got[0]["streams"].values())
    assert not [m for m in got if m["type"] == "snapshot"], "resumed: no fresh snapshot"
    assert sorted(numbered(got)) == [("broadcast", where["broadcast"] + 1, 11),
                                     ("user", where["user"] + 1, 10),
                                     ("user", where["user"] + 2, 12)]
    # A position from another epoch (a restarted gateway) gets a fresh snapshot instead.
    async with websockets.connect(f"{url}&broadcast=gone-0:5&user=gone-1:2") as stale:
        first = await collect(stale, lambda g: len(g) >= 2)
    assert [s["recovered"] for s in first[0]["streams"].values()] == [False, False]
    assert first[1]["type"] == "snapshot"
    assert first[1]["data"]["full"] is True


class StalledClient:
    """A WebSocket client that completes the handshake and then never reads."""

    def __init__(self, url: str) -> None:
        host, rest = url.removeprefix("ws://").split("/", 1)
        name, port = host.split(":")
        self.sock = socket.socket()
        # A tiny receive window: the server's writes back up after a few frames.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((name, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def close_code(self, timeout: float = 15) -> int | None:
        """Read everything left and return the code of the server's close frame."""
        self.sock.settimeout(timeout)
        buf = b""
        try:
            while chunk := self.sock.recv(1 << 20):
                buf += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        finally:
            self.sock.close()
        i = 0
        while i + 2 <= len(buf):
            opcode, length = buf[i] & 0x0F, buf[i + 1] & 0x7F
            i += 2
            if length == 126:
                length, i = int.from_bytes(buf[i:i + 2], "big"), i + 2
            elif length == 127:
                length, i = int.from_bytes(buf[i:i + 8], "big"), i + 8
            if opcode == 0x8:
                return int.from_bytes(buf[i:i + 2], "big")
            i += length
        return None


async def test_a_reader_that_stops_is_dropped_and_others_get_everything(
        env: Env, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway({"MLPULSE_WS_OUTBOX": "32"})
    n = 2000
    pad = "x" * 2000
    stalled = StalledClient(f"{gw.ws}?token={token('slow')}")
    try:
        async with websockets.connect(f"{gw.ws}?token={token('fast')}", max_size=None) as fast:
            await fast.recv()
            items = [("broadcast", {"type": "tick", "ts": 1.0, "data": {"n": i, "pad": pad}})
                     for i in range(n)]
            await asyncio.to_thread(publish_many, env, items)
            got = own(await collect(fast, lambda g: len(own(g)) >= n, seconds=60))
        assert [m["data"]["n"] for m in got] == list(range(n))
        reply = await asyncio.to_thread(httpx.get, gw.http + "/metrics",
                                        params={"token": token("ops")})
        metrics = reply.text

        def value(name: str) -> float:
            return float(next(line for line in metrics.splitlines()
                              if line.startswith(name + " ")).split()[-1])

        assert value("mlpulse_gateway_slow_client_drops_total") == 1
        # Never more than a write per delivery. How many share a write depends on how the
        # broker spreads them over turns of the event loop (a loaded machine hands them over
        # one by one), so the one-write-a-turn rule is tested in-process, in test_hub_unit.
        writes = value("mlpulse_gateway_socket_writes_total")
        assert 0 < writes <= value("mlpulse_gateway_deliveries_total")
        assert await asyncio.to_thread(stalled.close_code) == 1013
    finally:
        stalled.sock.close()  # also when an assertion above failed


async def test_every_gateway_delivers_every_event(
        env: Env, start_gateway: Callable[..., Gateway]) -> None:
    one, two = start_gateway(), start_gateway()
    async with websockets.connect(f"{one.ws}?token={token('carol')}") as a, \
            websockets.connect(f"{two.ws}?token={token('carol')}") as b:
        await a.recv()
        await b.recv()
        items = [("user.carol", {"type": "note", "ts": 1.0, "data": {"n": i}}) for i in range(40)]
        await asyncio.to_thread(publish_many, env, items)
        for ws in (a, b):
            got = own(await collect(ws, lambda g: len(own(g)) >= 40))
            assert [m["data"]["n"] for m in got] == list(range(40))


async def test_sigterm_closes_sockets_with_1001_and_exits_0(gateway: Gateway) -> None:
    async with websockets.connect(f"{gateway.ws}?token={token('dave')}") as ws:
        await ws.recv()
        gateway.role.proc.terminate()
        assert (await close_of(ws))[0] == 1001
    code = await asyncio.to_thread(gateway.role.proc.wait, 20)
    assert code == 0, gateway.role.output()
