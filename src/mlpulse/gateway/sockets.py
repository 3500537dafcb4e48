"""The WebSocket endpoint: checks before the upgrade, registration, one connection's lifetime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mlpulse.gateway.auth import AuthError, User
from mlpulse.gateway.deps import Gateway, gateway_of, user_of
from mlpulse.gateway.hub import CLOSE_TOO_SLOW, Client, FrameWriter, Hub
from mlpulse.gateway.relay import read_history

# Close codes of an accepted socket: 1003 for a frame type it does not take, 1008 when it
# loses its right (its token expires) or breaks a limit; 1013 (hub) when it falls behind.
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
RAW_SEND = "mlpulse.raw_send"
router = APIRouter()


class KeepRawSend:
    """ASGI middleware: remembers the server's own `send` for WebSockets.

    Starlette wraps `send` on its way to an endpoint; the hub needs the server's, to
    write frames without a task switch per message (see `hub.FrameWriter`)."""

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
    """Check, register and serve one WebSocket until it closes, falls behind or expires."""
    admitted = _admit(websocket, gw)
    if isinstance(admitted, Response):
        # Refused before the upgrade: an HTTP answer, and no socket to hold.
        await websocket.send_denial_response(admitted)
        return
    user = admitted
    await websocket.accept()
    if gw.hub.connections_of(user.name) >= gw.settings.ws_max_per_user:
        # A handshake that ran alongside this one took the last place.
        await websocket.close(CLOSE_POLICY, "too many connections")
        return
    client = gw.hub.add(websocket, user, FrameWriter.of(websocket.scope.get(RAW_SEND)))
    try:
        Hub.offer(client, gw.actualizer.full())
        for message in await read_history(gw.redis, user.name):
            Hub.offer(client, message)
        verdict = await _run_client(websocket, client, gw)
    finally:
        gw.hub.remove(client)
    if verdict is not None:
        await client.close(*verdict)


def _admit(websocket: WebSocket, gw: Gateway) -> User | Response:
    """The user a handshake speaks for, or the HTTP answer that refuses it."""
    origin = websocket.headers.get("origin")
    if origin is not None and origin not in gw.settings.origins():
        return _refusal(403, "origin not allowed")
    try:
        user = user_of(websocket)
    except AuthError as exc:
        return _refusal(401, str(exc), {"WWW-Authenticate": "Bearer"})
    if gw.hub.connections_of(user.name) >= gw.settings.ws_max_per_user:
        return _refusal(429, "too many connections")
    return user


def _refusal(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status, headers)


class _Ended(Exception):
    """One of a socket's tasks has decided how the socket ends; the others stop."""

    def __init__(self, verdict: tuple[int, str] | None) -> None:
        super().__init__(verdict)
        self.verdict = verdict


async def _ends(work: Awaitable[object], verdict: Callable[[Any], tuple[int, str] | None]) -> None:
    raise _Ended(verdict(await work))


async def _run_client(websocket: WebSocket, client: Client,
                      gw: Gateway) -> tuple[int, str] | None:
    """Serve one socket; the close code and reason it should end with, if any.

    Its four tasks run as one group: whichever ends first decides, and the group stops
    the rest; a failure of any of them is raised, not left behind."""
    ended: tuple[int, str] | None = None
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_ends(client.pump(), lambda _: None), name="pump")
            group.create_task(_ends(_read(websocket, client, gw), lambda v: v), name="reader")
            group.create_task(_ends(client.dropped.wait(),
                                    lambda _: (CLOSE_TOO_SLOW, "too slow: outbox full")))
            group.create_task(_ends(_expiry(client.user),
                                    lambda _: (CLOSE_POLICY, "token expired")))
    except* _Ended as done:
        ended = next(e.verdict for e in done.exceptions if isinstance(e, _Ended))
    except* (WebSocketDisconnect, RuntimeError, OSError):
        ended = None  # the peer went away while a frame was being written
    return ended


async def _expiry(user: User) -> None:
    """Returns when the user's token expires; never, for a user without an expiry."""
    if user.expires is None:
        await asyncio.get_running_loop().create_future()
    else:
        await asyncio.sleep(max(0.0, user.expires - time.time()))


async def _read(websocket: WebSocket, client: Client, gw: Gateway) -> tuple[int, str] | None:
    """Read client frames under a rate limit; returns a close code when one is due."""
    rate, burst = gw.settings.ws_rate, gw.settings.ws_burst
    tokens, last = float(burst), time.monotonic()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            return CLOSE_UNSUPPORTED, "binary frames are not accepted"
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
