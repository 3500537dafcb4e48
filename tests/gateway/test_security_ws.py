"""What a hostile client can make the gateway hold: refusals before the upgrade, bounded
requests, sockets that end with their token, and close codes that reach the client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pika
import psutil
import pytest
import websockets
from playwright.sync_api import Browser

from tests.conftest import Env, Role, wait_until
from tests.gateway.conftest import Gateway, chromium_browser, close_of, publish_event, token

MB = 1 << 20
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


# ------------------------------------------------------------------ raw HTTP and frames

def upgrade_request(gw: Gateway, target: str = "/ws", headers: dict[str, str] | None = None,
                    origin: str | None = None) -> bytes:
    """A WebSocket handshake request, written by hand so nothing hides what is sent."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{gw.port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_head(reader: asyncio.StreamReader, seconds: float = 10) -> tuple[int, bytes]:
    """The status code and head of one HTTP response."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
    return int(head.split(b" ", 2)[1]), head


async def ask(gw: Gateway, request: bytes, seconds: float = 10) -> tuple[int, bytes]:
    """Send one request on a fresh connection; the answer's status code and head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_head(reader, seconds)
    finally:
        writer.close()


async def eof_after(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    start = time.monotonic()
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), seconds):
        data += chunk
    return data, time.monotonic() - start


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (payload under 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def server_frames(buf: bytes) -> list[tuple[int, bytes]]:
    """Opcode and payload of every complete server frame in `buf`."""
    frames, i = [], 0
    while i + 2 <= len(buf):
        opcode, length = buf[i] & 0x0F, buf[i + 1] & 0x7F
        j = i + 2
        if length == 126:
            length, j = int.from_bytes(buf[j:j + 2], "big"), j + 2
        elif length == 127:
            length, j = int.from_bytes(buf[j:j + 8], "big"), j + 8
        if j + length > len(buf):
            break
        frames.append((opcode, buf[j:j + length]))
        i = j + length
    return frames


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """Chromium for one test: Playwright's loop must be gone before the async tests run."""
    with chromium_browser() as browser:
        yield browser


def rss(gw: Gateway) -> int:
    return int(psutil.Process(gw.role.proc.pid).memory_info().rss)


def publish_many(env: Env, items: list[tuple[str, bytes]]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    ch = conn.channel()
    ch.exchange_declare("mlpulse.events", exchange_type="topic", durable=True)
    for key, body in items:
        ch.basic_publish("mlpulse.events", key, body)
    conn.close()


def me(gw: Gateway, user: str) -> dict[str, object]:
    reply = httpx.get(gw.http + "/api/me", params={"token": token(user)})
    doc: dict[str, object] = reply.json()
    return doc


# ------------------------------------------------------------------ item 7: refusals

async def test_a_refused_handshake_is_an_http_answer_before_the_upgrade(
        start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway({"MLPULSE_WS_MAX_PER_USER": "1"})
    # No token, a bad one, an expired one: 401 and no socket.
    for target in ("/ws", "/ws?token=not-a-token", f"/ws?token={token('alice', ttl=-5)}"):
        status, head = await ask(gw, upgrade_request(gw, target, origin=gw.origin))
        assert status == 401, (target, head)
        assert b"upgrade: websocket" not in head.lower()
    # A foreign Origin: 403, even with a valid token.
    status, _ = await ask(gw, upgrade_request(gw, f"/ws?token={token('alice')}",
                                              origin="http://evil.example"))
    assert status == 403
    # Too many sockets for one user: 429, and the open one is left alone.
    async with websockets.connect(f"{gw.ws}?token={token('alice')}") as first:
        assert [json.loads(await first.recv())["type"] for _ in "ab"] == ["hello", "snapshot"]
        status, _ = await ask(gw, upgrade_request(gw, f"/ws?token={token('alice')}"))
        assert status == 429
        await first.send("ping")
        assert json.loads(await asyncio.wait_for(first.recv(), 5))["type"] == "pong"
    # The websockets client sees the same refusal as an HTTP status.
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(gw.ws):
            pass
    assert refused.value.response.status_code == 401


async def test_a_peer_that_never_reads_cannot_pin_memory_with_pings(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(upgrade_request(gateway, f"/ws?token={token('pinger')}"))
    status, _ = await read_head(reader)
    assert status == 101
    before = rss(gateway)
    block = b"".join(client_frame(0x9, b"p" * 125) for _ in range(MB // 131))
    sent = 0
    try:
        while sent < 32 * MB:
            writer.write(block)
            # A server that stopped reading makes the writes back up: that is the point.
            await asyncio.wait_for(writer.drain(), 3)
            sent += len(block)
    except TimeoutError:
        pass
    grown = rss(gateway) - before
    writer.transport.abort()
    assert sent < 16 * MB, f"the gateway kept reading pings ({sent / MB:.0f} MB)"
    assert grown < 8 * MB, f"gateway RSS grew {grown / MB:.1f} MB"


# ------------------------------------------------------------------ item 8: bounded requests

async def test_a_huge_header_gets_431_without_being_buffered(gateway: Gateway) -> None:
    await ask(gateway, HEALTHZ)  # warm up the request path before measuring
    before = rss(gateway)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    answer = asyncio.create_task(read_head(reader, 20))
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk = b"a" * (256 * 1024)
    try:
        for _ in range(32 * MB // len(chunk)):
            if answer.done():
                break
            writer.write(chunk)
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server answered and hung up
    status, _ = await answer
    elapsed = time.monotonic() - started
    grown = rss(gateway) - before
    writer.close()
    assert status == 431
    assert elapsed < 3, elapsed
    assert grown < 4 * MB, f"gateway RSS grew {grown / MB:.1f} MB"
    assert (await ask(gateway, HEALTHZ))[0] == 200


async def test_a_long_request_line_gets_400_also_on_the_handshake(gateway: Gateway) -> None:
    long = "a" * 9000
    status, _ = await ask(gateway, f"GET /healthz?pad={long} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 400
    status, _ = await ask(gateway, upgrade_request(gateway, f"/ws?token={token('a')}&pad={long}"))
    assert status == 400
    # A head under the limits still works, for HTTP and for the handshake.
    roomy = {"X-Roomy": "b" * 6000, "X-Roomy-Too": "c" * 6000}
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in roomy.items()) + b"\r\n"
    assert (await ask(gateway, request))[0] == 200
    status, _ = await ask(gateway, upgrade_request(gateway, f"/ws?token={token('a')}", roomy))
    assert status == 101
    # A single header line the WebSocket parser will not take is answered, not held open.
    status, _ = await ask(gateway, upgrade_request(gateway, f"/ws?token={token('a')}",
                                                   {"X-Long": "d" * 9000}))
    assert status == 431


async def test_slow_heads_get_408_and_idle_connections_are_closed(
        start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway({"MLPULSE_HTTP_HEADER_TIMEOUT": "1", "MLPULSE_HTTP_KEEPALIVE": "1"})
    # A partial request is answered 408 once its time is up, and the connection ends.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    data, took = await eof_after(reader, 5)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert took < 2.5, took
    writer.close()
    # A slowloris sending a byte every 0.3 s is not kept alive past the same bound.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    started = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"z" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.3)

    dripping = asyncio.create_task(trickle())
    try:
        data, _ = await eof_after(reader, 5)
    finally:
        dripping.cancel()
    assert data.startswith(b"HTTP/1.1 408"), data
    assert time.monotonic() - started < 2.5
    writer.close()
    # A connection that never sends a byte, and one idle after its answer, are closed.
    for request in (b"", HEALTHZ):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(request)
        data, took = await eof_after(reader, 5)
        assert data.startswith(b"HTTP/1.1 200") if request else data == b""
        assert took < 2.5, took
        writer.close()


# ------------------------------------------------------------------ item 13: token expiry

async def test_a_socket_is_closed_when_its_token_expires(env: Env, gateway: Gateway) -> None:
    short = token("erin", ttl=3)
    expires = json.loads(base64.urlsafe_b64decode(short.split(".")[1] + "=="))["exp"]
    async with websockets.connect(f"{gateway.ws}?token={short}") as ws:
        assert [json.loads(await ws.recv())["type"] for _ in "ab"] == ["hello", "snapshot"]
        publish_event(env, "user.erin", b'{"type": "note", "ts": 1, "data": {"n": 1}}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["data"] == {"n": 1}
        code, reason = await asyncio.wait_for(close_of(ws), 10)
    assert (code, reason) == (1008, "token expired")
    assert expires - 0.5 <= time.time() < expires + 2
    assert (await asyncio.to_thread(me, gateway, "erin"))["connections"] == 0


def test_the_dashboard_says_signed_out_instead_of_reconnecting(
        start_gateway: Callable[..., Gateway], spawn: Callable[..., Role],
        chromium: Browser) -> None:
    gw = start_gateway()
    page = chromium.new_page()
    # The token expires under an open socket: closed with 1008, and the page says why.
    page.goto(f"{gw.http}/?token={token('gina', ttl=3)}")
    page.wait_for_selector("#conn[data-state=live]")
    page.wait_for_selector("#conn[data-state=signed-out]", timeout=15_000)
    assert "token expired" in (page.text_content("#conn") or "")
    assert page.get_attribute("#conn a", "href") == "/logout"
    # The token expires while the gateway is away: the handshake is refused with 401,
    # which the page cannot read, and it asks /api/me rather than retrying forever.
    short = token("gina", ttl=4)
    expires = json.loads(base64.urlsafe_b64decode(short.split(".")[1] + "=="))["exp"]
    page.goto(f"{gw.http}/?token={short}")
    page.wait_for_selector("#conn[data-state=live]")
    assert gw.role.stop() == 0
    page.wait_for_selector("#conn[data-state=offline]")
    wait_until(lambda: time.time() > expires + 1, what="the token to expire")
    spawn("gateway", extra={"MLPULSE_HTTP_PORT": str(gw.port)}, ready=r"ready: http")
    page.wait_for_selector("#conn[data-state=signed-out]", timeout=30_000)
    assert "token expired" in (page.text_content("#conn") or "")
    page.close()


# ------------------------------------------------------------------ item 14: close codes

async def test_a_binary_frame_is_closed_with_1003(gateway: Gateway) -> None:
    async with websockets.connect(f"{gateway.ws}?token={token('frank')}") as ws:
        await ws.recv()
        await ws.send(b"\x00\x01binary")
        code, reason = await asyncio.wait_for(close_of(ws), 10)
    assert code == 1003
    assert "binary" in reason


async def test_a_dropped_slow_reader_gets_1013_when_it_reads_again(
        env: Env, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway({"MLPULSE_WS_OUTBOX": "16"})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(upgrade_request(gw, f"/ws?token={token('slow')}"))
    assert (await read_head(reader))[0] == 101
    pad = "x" * 4000
    items = [("broadcast", json.dumps({"type": "tick", "ts": 1, "data": {"n": i, "pad": pad}})
              .encode()) for i in range(1000)]
    await asyncio.to_thread(publish_many, env, items)

    def dropped() -> bool:
        metrics = httpx.get(gw.http + "/metrics", params={"token": token("ops")}).text
        return "mlpulse_gateway_slow_client_drops_total 1.0" in metrics

    await asyncio.to_thread(wait_until, dropped, 20, "the stalled reader dropped")
    # The client stays stalled a while longer (longer than the server once waited)...
    await asyncio.sleep(4)
    # ...then reads everything: the last frame is the server's close with 1013.
    data, _ = await eof_after(reader, 15)
    writer.close()
    frames = server_frames(data)
    assert frames, "nothing arrived"
    opcode, payload = frames[-1]
    assert opcode == 0x8, f"no close frame after {len(frames)} frames"
    assert int.from_bytes(payload[:2], "big") == 1013
