"""The WebSocket endpoint: checks, registration, and one connection's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from mlpulse.gateway.auth import AuthError
from mlpulse.gateway.deps import Gateway, gateway_of, user_of
from mlpulse.gateway.hub import CLOSE_TOO_SLOW, Client, Hub, Wire
from mlpulse.gateway.relay import read_history

CLOSE_POLICY = 1008
RAW_SEND = "mlpulse.raw_send"
router = APIRouter()


class KeepRawSend:
    """ASGI middleware: remembers the server's own `send` for WebSockets.

    Starlette wraps `send` on its way to an endpoint; the hub needs the server's, to
    write frames without a task switch per message (see `hub.Wire`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


@router.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    """Live updates: the snapshot, then diffs, broadcasts and my own messages."""
    await serve_socket(websocket, gateway_of(websocket))


async def serve_socket(websocket: WebSocket, gw: Gateway) -> None:
    """Check, register and serve one WebSocket until it closes or falls behind."""
    settings = gw.settings
    # Accept first, so a refusal reaches the client as close code 1008, not an HTTP error.
    await websocket.accept()
    origin = websocket.headers.get("origin")
    if origin is not None and origin not in settings.origins():
        await websocket.close(CLOSE_POLICY, "origin not allowed")
        return
    try:
        user = user_of(websocket)
    except AuthError as exc:
        await websocket.close(CLOSE_POLICY, str(exc))
        return
    if gw.hub.connections_of(user.name) >= settings.ws_max_per_user:
        await websocket.close(CLOSE_POLICY, "too many connections")
        return
    client = gw.hub.add(websocket, user, Wire.of(websocket.scope.get(RAW_SEND)))
    try:
        Hub.offer(client, gw.actualizer.full())
        for message in await read_history(gw.redis, user.name):
            Hub.offer(client, message)
        await _run_client(websocket, client, gw)
    finally:
        gw.hub.remove(client)


async def _run_client(websocket: WebSocket, client: Client, gw: Gateway) -> None:
    pump = asyncio.create_task(client.pump())
    reader = asyncio.create_task(_read(websocket, client, gw))
    slow = asyncio.create_task(client.dropped.wait())
    done, pending = await asyncio.wait({pump, reader, slow}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError,
                                 RuntimeError):
            await task
    # Every finished task's outcome is read here, so none is reported as unretrieved.
    failures = {t: t.exception() for t in done if not t.cancelled()}
    if slow in done:
        await _close(websocket, CLOSE_TOO_SLOW, "too slow: outbox full")
    elif reader in done and failures[reader] is None:
        verdict = reader.result()
        if verdict is not None:
            await _close(websocket, *verdict)
    exc = failures.get(pump)
    if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError | OSError):
        raise exc


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # A reader that stopped reading may never let the close frame through: bound the wait.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason), 2.0)


async def _read(websocket: WebSocket, client: Client, gw: Gateway) -> tuple[int, str] | None:
    """Read client frames under a rate limit; returns a close code when one is due."""
    rate, burst = gw.settings.ws_rate, gw.settings.ws_burst
    tokens, last = float(burst), time.monotonic()
    while True:
        try:
            text = await websocket.receive_text()
        except WebSocketDisconnect:
            return None
        now = time.monotonic()
        tokens = min(burst, tokens + (now - last) * rate)
        last = now
        if tokens < 1:
            return CLOSE_POLICY, "rate limit exceeded"
        tokens -= 1
        if _is_ping(text):
            Hub.offer(client, orjson.dumps({"type": "pong", "ts": time.time()}).decode())


def _is_ping(text: str) -> bool:
    """`ping` or `{"type": "ping"}`; anything else a client sends is ignored."""
    if text.strip() == "ping":
        return True
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("type") == "ping"
