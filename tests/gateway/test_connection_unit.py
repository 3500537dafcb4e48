"""One WebSocket connection in-process, over a stand-in transport: the handshake's answers,
keepalive pings, and the bound on what waits for a reader that stopped.

tests/gateway/test_security_ws.py covers the same bounds end to end, through a real gateway.
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from mlpulse.config import Settings
from mlpulse.gateway.auth import issue_token
from mlpulse.gateway.hub import DROPS, Hub
from mlpulse.gateway.sockets import PING_TIMEOUT, Connection

SECRET = b"unit-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


@dataclass
class FakeTransport:
    """Keeps what is written; says whether it was closed."""

    written: bytearray = field(default_factory=bytearray)
    closing: bool = False
    reading: bool = True

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Opcode and payload of every unmasked frame in `data`."""
    frames, i = [], 0
    while i < len(data):
        opcode, length, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if length == 126:
            length, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        frames.append((opcode, data[i:i + length]))
        i += length
    return frames


def masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def connection(outbox: int = 4) -> tuple[Connection, FakeTransport, Hub]:
    hub = Hub(outbox_limit=outbox)
    settings = Settings(secret=SECRET.decode(), http_port=8080)
    gateway = SimpleNamespace(hub=hub, settings=settings, secret=SECRET, redis=None,
                              actualizer=SimpleNamespace(full=lambda: '{"type":"snapshot"}'))
    conn = Connection.bound(gateway)()  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, hub


def upgrade(target: str, **headers: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {target} HTTP/1.1", "Host: localhost:8080", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def joined(history: Any = ()) -> tuple[Connection, FakeTransport, Hub]:
    conn, transport, hub = connection()
    conn.data_received(upgrade(f"/ws?token={issue_token(SECRET, 'alice')}"))
    assert transport.take().startswith(b"HTTP/1.1 101")
    assert conn.task is not None
    conn.hub.add(conn)  # joined without the store: the hub's side is what is tested here
    conn.task.cancel()
    conn.joined = True
    return conn, transport, hub


async def test_refusals_are_http_answers_with_a_reason() -> None:
    cases = {
        "/elsewhere": b"404",
        "/ws": b"401",
        f"/ws?token={issue_token(SECRET, 'bob')}&x=1": b"403",
    }
    for target, status in cases.items():
        conn, transport, _ = connection()
        origin = {"Origin": "http://evil.example"} if status == b"403" else {}
        conn.data_received(upgrade(target, **origin))
        head, _, body = transport.take().partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == status, (target, head)
        assert body.startswith(b'{"detail":'), body
        assert transport.closing, "no socket after a refusal"


async def test_a_ping_left_unanswered_closes_with_1011_and_a_pong_clears_it() -> None:
    conn, transport, _ = await joined()
    conn.ping(100.0)
    assert [op for op, _ in server_frames(transport.take())] == [0x9]
    conn.data_received(masked(0xA, b""))  # the pong
    conn.ping(100.0 + PING_TIMEOUT)  # answered: a new ping, not a close
    assert [op for op, _ in server_frames(transport.take())] == [0x9]
    conn.ping(100.0 + 2 * PING_TIMEOUT - 1)
    assert transport.take() == b"", "still within its time"
    conn.ping(100.0 + 2 * PING_TIMEOUT)
    (opcode, payload), = server_frames(transport.take())
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 1011
    assert conn not in conn.hub.clients


async def test_a_reader_that_stopped_is_closed_with_1013_once_its_outbox_is_full() -> None:
    conn, transport, hub = await joined()
    conn.pause_writing()
    assert not transport.reading, "no reading while writes back up"
    drops = DROPS._value.get()
    for n in range(4):
        hub.broadcast(f'{{"type":"note","n":{n}}}')
        hub.flush()
    assert [op for op, _ in server_frames(transport.take())] == [0x1] * 4
    assert conn in hub.clients
    hub.broadcast('{"type":"note","n":4}')
    hub.flush()
    (opcode, payload), = server_frames(transport.take())
    assert opcode == 0x8, "the fifth waiting message closes it; it is not written"
    assert int.from_bytes(payload[:2], "big") == 1013
    assert DROPS._value.get() == drops + 1
    assert conn not in hub.clients


async def test_a_reader_that_catches_up_starts_its_count_again() -> None:
    conn, transport, hub = await joined()
    for _ in range(3):
        conn.pause_writing()
        for n in range(4):
            hub.broadcast(f'{{"type":"note","n":{n}}}')
            hub.flush()
        conn.resume_writing()
    assert [op for op, _ in server_frames(transport.take())] == [0x1] * 12
    assert conn in hub.clients


async def test_a_ping_message_gets_a_pong_outside_every_stream() -> None:
    conn, transport, _ = await joined()
    conn.data_received(masked(0x1, b'{"type": "ping"}'))
    (opcode, payload), = server_frames(transport.take())
    assert opcode == 0x1
    assert payload.startswith(b'{"type":"pong"')
    conn.data_received(masked(0x2, b"\x00"))
    (opcode, payload), = server_frames(transport.take())
    assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1003)
    await asyncio.sleep(0)


async def test_a_handshake_that_breaks_a_header_rule_is_answered_not_raised() -> None:
    """Two Origin headers made websockets raise inside uvicorn's call, before the
    transport was this connection's: no answer, and the connection stayed in uvicorn's
    set for good. Now it is a 400, and a position with a non-ASCII digit is ignored."""
    conn, transport, _ = connection()
    request = upgrade(f"/ws?token={issue_token(SECRET, 'bob')}", Origin="http://localhost:8080")
    conn.data_received(request.replace(b"\r\n\r\n", b"\r\nOrigin: http://x.example\r\n\r\n"))
    head, _, body = transport.take().partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"more than one Origin" in body
    assert transport.closing
    conn, transport, _ = connection()
    conn.data_received(upgrade(f"/ws?token={issue_token(SECRET, 'bob')}&user=e:%C2%B2"))
    assert transport.take().startswith(b"HTTP/1.1 101")
    assert conn.task is not None
    conn.task.cancel()


async def test_the_token_cookie_is_found_beside_cookies_of_other_apps() -> None:
    conn, transport, _ = connection()
    cookie = f'a=b c; prefs={{"x": 1}}; token={issue_token(SECRET, "carol")}'
    conn.data_received(upgrade("/ws", Cookie=cookie))
    assert transport.take().startswith(b"HTTP/1.1 101")
    assert conn.user.name == "carol"
    assert conn.task is not None
    conn.task.cancel()


async def test_a_socket_that_cannot_join_is_closed_with_1011_and_not_left_open() -> None:
    conn, transport, hub = connection()
    conn.data_received(upgrade(f"/ws?token={issue_token(SECRET, 'dan')}"))
    assert transport.take().startswith(b"HTTP/1.1 101")
    assert hub.connections_of("dan") == 1, "a socket still joining counts"
    assert conn.task is not None
    await conn.task  # the store is missing here: the join fails
    (opcode, payload), = server_frames(transport.take())
    assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1011)
    assert hub.connections_of("dan") == 0
    assert "dan" in hub.idle, "its stream is forgotten in time"
