"""The WebSocket endpoint `/ws`: checks before the upgrade, then one connection's lifetime.

A connection is the `websockets` library's sans-I/O `ServerProtocol` (its public interface)
driven by a plain asyncio protocol, which Uvicorn hands the socket to when a request asks
for the upgrade: one port and one event loop serve HTTP and WebSockets. The hub writes the
frames it built once straight to each connection's transport (see `hub`).

Bounds on what one peer can make the gateway hold:
- a refused handshake gets an HTTP answer (401, 403, 404 or 429) and no socket;
- a frame is at most `ws_max_frame_bytes`, and `ws_rate` frames a second (burst `ws_burst`);
- while the transport's write buffer is over its high-water mark, the connection stops
  reading, so a peer that never reads cannot make the gateway queue pongs; and once
  `ws_outbox` messages have waited for it there, it is closed with 1013;
- a closing socket whose peer never takes its last bytes is cut off after `CLOSE_TIMEOUT`;
- a peer that does not answer a ping within `PING_TIMEOUT` is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import parse_qs, urlsplit

import orjson
import redis.exceptions
from starlette.requests import cookie_parser
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from mlpulse.gateway.auth import AuthError, User, verify_token
from mlpulse.gateway.deps import COOKIE
from mlpulse.gateway.hub import CLOSE_TOO_SLOW, DROPS, Hub, Position, direct
from mlpulse.gateway.relay import read_history
from mlpulse.waiting import stopped_within

if TYPE_CHECKING:
    from mlpulse.gateway.deps import Gateway

log = logging.getLogger(__name__)
# The protocol's own log says "connection open" for every socket; only its warnings count.
protocol_log = logging.getLogger(f"{__name__}.protocol")
protocol_log.setLevel(logging.WARNING)

PATH = "/ws"
# Close codes of an accepted socket: 1003 for a frame type it does not take, 1008 when it
# loses its right (its token expires) or breaks a limit, 1011 when it stops answering
# pings; 1013 (hub) when it falls behind; 1001 when the gateway stops.
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL = 1011
CLOSE_TIMEOUT = 10.0
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
HISTORY_READ_SECONDS = 5.0


class Refused(Exception):
    """A handshake the gateway answers with an HTTP status instead of the upgrade."""

    def __init__(self, status: HTTPStatus, detail: str, headers: Iterable[tuple[str, str]] = ()):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, tuple(headers)


def token_in(request: Request, query: dict[str, list[str]]) -> str | None:
    """The token of a handshake: Authorization header, `token` query parameter or cookie,
    read as every HTTP route reads them (`deps.token_of`)."""
    header = _only(request, "Authorization") or ""
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    if query.get("token"):
        return query["token"][-1]
    for line in request.headers.get_all("Cookie"):
        token = cookie_parser(line).get(COOKIE)
        if token:
            return token
    return None


def _only(request: Request, name: str) -> str | None:
    """A header that may appear once; `Refused` (400) when it appears more often."""
    values = request.headers.get_all(name)
    if len(values) > 1:
        raise Refused(HTTPStatus.BAD_REQUEST, f"more than one {name} header")
    return values[0] if values else None


class Connection(asyncio.Protocol):
    """One WebSocket connection, from the upgrade request on.

    Uvicorn makes one with its own keyword arguments (`uvicorn.Config(ws=...)` takes the
    class) and hands it the transport and the request; nothing of Uvicorn's is read beyond
    the set of open connections, which its shutdown closes."""

    gateway: ClassVar[Gateway]

    @classmethod
    def bound(cls, gateway: Gateway) -> type[Connection]:
        """This protocol serving `gateway`, as a class for `uvicorn.Config(ws=...)`."""
        return type(cls.__name__, (cls,), {"gateway": gateway})

    def __init__(self, config: Any = None, server_state: Any = None, app_state: Any = None,
                 _loop: Any = None) -> None:
        gw = self.gateway
        self.hub: Hub = gw.hub
        self.settings = gw.settings
        self.open_connections: set[Any] = (
            server_state.connections if server_state is not None else set())
        self.proto = ServerProtocol(max_size=gw.settings.ws_max_frame_bytes,
                                    logger=protocol_log)
        self.transport: asyncio.Transport | None = None
        self.user: User = User("")
        self.joined = False
        self.closing = False
        self.paused = False
        self.waiting = 0  # messages written while the transport was over its high-water mark
        self.tokens, self.last = float(gw.settings.ws_burst), time.monotonic()
        self.ping_sent: float | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.task: asyncio.Task[None] | None = None
        self.counted = False  # among its user's sockets while it joins

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.open_connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._guarded(self.proto.receive_data, data)

    def eof_received(self) -> bool | None:
        self._guarded(self.proto.receive_eof)
        return None

    def _guarded(self, receive: Any, *args: Any) -> None:
        """Feed the protocol and act on what it parsed; nothing may escape to the transport.

        The first call comes from uvicorn before the transport is ours: an exception there
        would end the connection without `connection_lost` ever reaching this object,
        which would stay in uvicorn's set of open connections."""
        try:
            receive(*args)
            self._handle_events()
        except Exception:
            log.exception("a WebSocket connection of %r failed", self.user.name or "?")
            if self.proto.state is State.CONNECTING:
                with contextlib.suppress(Exception):
                    self.proto.send_response(self.proto.reject(
                        HTTPStatus.INTERNAL_SERVER_ERROR, "internal error"))
            else:
                self.close(CLOSE_INTERNAL, "internal error")
            with contextlib.suppress(Exception):
                self._flush()
            if self.transport is not None and not self.transport.is_closing():
                self._later(CLOSE_TIMEOUT, self._end)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.hub.remove(self)
        self.open_connections.discard(self)
        for timer in self.timers:
            timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.waiting = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def shutdown(self) -> None:
        """Uvicorn's shutdown: tell the client the gateway is going away."""
        self.close(CLOSE_GOING_AWAY, "server shutting down")

    # ------------------------------------------------------------------ the hub's side

    def write(self, data: bytes, messages: int) -> bool:
        """Write frames the hub built; False once the socket is closing. Past `ws_outbox`
        messages waiting behind a full transport buffer, the socket is closed as too slow."""
        if self.closing:
            return False
        if self.paused:
            self.waiting += messages
            if self.waiting > self.hub.outbox_limit:
                DROPS.inc()
                log.info("dropping a slow client of %s (outbox full)", self.user.name)
                self.close(CLOSE_TOO_SLOW, "too slow: outbox full")
                return False
        transport = self.transport
        if transport is None or transport.is_closing():
            return False  # the peer is gone; connection_lost is on its way
        transport.write(data)
        return True

    def close(self, code: int, reason: str) -> None:
        """Send a close frame behind what is buffered, however full the buffer is, and stop
        sending. A reader that resumes gets its backlog, then the close; one that never does
        is cut off after `CLOSE_TIMEOUT`."""
        if self.closing:
            return
        self.closing = True
        self.hub.remove(self)
        if self.proto.state is State.OPEN:
            self.proto.send_close(code, reason)
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            # Read again, so the peer's closing reply is seen; not while writes are backed
            # up, since a ping would still get a pong until the close is complete.
            if not self.paused:
                self.transport.resume_reading()
            self._later(CLOSE_TIMEOUT, self._end)

    def ping(self, now: float) -> None:
        """Ping, or cut off a peer that left the last ping unanswered for `PING_TIMEOUT`."""
        if self.closing:
            return
        if self.ping_sent is not None:
            if now - self.ping_sent >= PING_TIMEOUT:
                log.info("closing a socket of %s: no pong in %.0fs", self.user.name, PING_TIMEOUT)
                self.close(CLOSE_INTERNAL, "keepalive ping timeout")
            return
        self.ping_sent = now
        with contextlib.suppress(InvalidState):
            self.proto.send_ping(b"")
        self._flush()

    # ------------------------------------------------------------------ internals

    def _handle_events(self) -> None:
        for event in self.proto.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def _flush(self) -> None:
        """Write what the protocol has to send; its end of data means closing TCP."""
        transport = self.transport
        if transport is None:
            return
        for data in self.proto.data_to_send():
            if data:
                transport.write(data)
            else:
                self.closing = True
                self.hub.remove(self)
                transport.close()
                self._later(1.0, self._end)  # a peer that never reads its last bytes
        if self.proto.close_expected() and not self.closing:
            self.closing = True
            self.hub.remove(self)
            self._later(CLOSE_TIMEOUT, self._end)

    def _end(self) -> None:
        """Close, and cut off a peer that has not taken its last bytes a second later."""
        transport = self.transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()
            self._later(1.0, self._end)
        else:
            transport.abort()

    def _later(self, delay: float, callback: Any) -> None:
        self.timers.append(asyncio.get_running_loop().call_later(delay, callback))

    def _handshake(self, request: Request) -> None:
        try:
            self.user, positions = self._admit(request)
        except Refused as refusal:
            log.info("refused a WebSocket handshake: %d %s", refusal.status.value,
                     refusal.detail)
            response = self.proto.reject(refusal.status, "")
            body = orjson.dumps({"detail": refusal.detail})
            response.body = body
            for name, value in (("Content-Type", "application/json"),
                                ("Content-Length", str(len(body))), *refusal.headers):
                with contextlib.suppress(KeyError):  # headers keep every value set
                    del response.headers[name]
                response.headers[name] = value
            self.proto.send_response(response)
            return
        response = self.proto.accept(request)
        with contextlib.suppress(KeyError):
            del response.headers["Server"]
        self.proto.send_response(response)
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            return  # not a valid upgrade request: websockets said why
        if self.user.expires is not None:
            self._later(max(0.0, self.user.expires - time.time()),
                        lambda: self.close(CLOSE_POLICY, "token expired"))
        self._count()
        self.task = asyncio.get_running_loop().create_task(self._join(*positions))
        self.task.add_done_callback(self._uncount)

    def _admit(self, request: Request) -> tuple[User, tuple[Position | None, Position | None]]:
        """The user a handshake speaks for and the positions it resumes from; `Refused`
        otherwise."""
        url = urlsplit(request.path)
        if url.path != PATH:
            raise Refused(HTTPStatus.NOT_FOUND, "no WebSocket here; it is at /ws")
        origin = _only(request, "Origin")
        if origin is not None and origin not in self.settings.origins():
            raise Refused(HTTPStatus.FORBIDDEN, "origin not allowed")
        query = parse_qs(url.query)
        try:
            user = verify_token(self.gateway.secret, token_in(request, query))
        except AuthError as exc:
            raise Refused(HTTPStatus.UNAUTHORIZED, str(exc),
                          [("WWW-Authenticate", "Bearer")]) from None
        if self.hub.connections_of(user.name) >= self.settings.ws_max_per_user:
            raise Refused(HTTPStatus.TOO_MANY_REQUESTS, "too many connections")
        return user, (Position.parse(_first(query, "broadcast")),
                      Position.parse(_first(query, "user")))

    async def _join(self, broadcast_at: Position | None, user_at: Position | None) -> None:
        """Read the user's latest messages if its stream cannot be resumed, then join.

        Counted among the user's sockets meanwhile, so a slow store cannot let one user
        open sockets past the cap."""
        name = self.user.name
        hub = self.hub
        try:
            history: list[str] = []
            history_at: Position | None = None
            stream = hub.hold(name)
            if stream.since(user_at) is None:
                history_at = Position(stream.epoch, stream.offset)
                try:
                    async with asyncio.timeout(HISTORY_READ_SECONDS):
                        history = await read_history(self.gateway.redis, name)
                except (redis.exceptions.RedisError, TimeoutError) as exc:
                    log.warning("no history for a new socket of %s: %r", name, exc)
            self._uncount()
            if self.closing:
                return
            if hub.connections_of(name) >= self.settings.ws_max_per_user:
                # A handshake that ran alongside this one took the last place.
                self.close(CLOSE_POLICY, "too many connections")
                return
            hub.welcome(self, broadcast_at, user_at, self.gateway.actualizer.full, history,
                        history_at)
            self.joined = True
        except Exception:
            log.exception("a socket of %s could not join", name)
            self.close(CLOSE_INTERNAL, "internal error")

    def _count(self) -> None:
        """Count this socket among its user's while it joins."""
        joining = self.hub.joining
        joining[self.user.name] = joining.get(self.user.name, 0) + 1
        self.counted = True

    def _uncount(self, _: object = None) -> None:
        """Stop counting it as joining: it joined, or never will (also when its task was
        cancelled before it ran)."""
        if self.counted:
            self.counted = False
            joining, name = self.hub.joining, self.user.name
            joining[name] -= 1
            if not joining[name]:
                del joining[name]

    def _frame(self, frame: Frame) -> None:
        """A frame from the client: control frames are the protocol's; data frames are rate
        limited, and a ping gets a pong."""
        if frame.opcode in (Opcode.PING, Opcode.CLOSE) or self.closing:
            return
        if frame.opcode is Opcode.PONG:
            self.ping_sent = None
            return
        if frame.opcode is Opcode.BINARY:
            self.close(CLOSE_UNSUPPORTED, "binary frames are not accepted")
            return
        now = time.monotonic()
        rate, burst = self.settings.ws_rate, self.settings.ws_burst
        self.tokens = min(burst, self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens < 1:
            self.close(CLOSE_POLICY, "rate limit exceeded")
            return
        self.tokens -= 1
        if frame.opcode is Opcode.TEXT and frame.fin and self.joined and _is_ping(frame.data):
            self.write(direct(orjson.dumps({"type": "pong", "ts": time.time()}).decode()), 1)


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _is_ping(data: bytes | bytearray | memoryview) -> bool:
    """`ping` or `{"type": "ping"}`; anything else a client sends is ignored."""
    if bytes(data).strip() == b"ping":
        return True
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("type") == "ping"


async def keepalive(hub: Hub, stop: asyncio.Event) -> None:
    """Every `PING_INTERVAL`: ping every socket, cut off the silent, forget idle streams."""
    while not await stopped_within(stop, PING_INTERVAL):
        now = time.monotonic()
        for sock in tuple(hub.clients):
            if isinstance(sock, Connection):
                sock.ping(now)
        hub.sweep()


def close_all(hub: Hub, code: int, reason: str) -> None:
    """Close every socket the hub knows with `code`."""
    for sock in tuple(hub.clients):
        if isinstance(sock, Connection):
            sock.close(code, reason)
