"""Uvicorn's HTTP protocol, bounded in what one peer can make the gateway hold.

HTTP (h11): a request head has `http_max_header_bytes` (431), its request line
`http_max_request_line` (400), and `http_header_timeout` seconds from its first byte to its
last (408). A connection with no request under way closes after `http_keepalive` seconds,
a fresh one included. A WebSocket handshake is an HTTP request first, so it gets the same
bounds before uvicorn hands it to the gateway's WebSocket protocol (`sockets`).
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on a request head that uvicorn's own settings do not cover."""

    max_request_line: int = 8 * 1024
    header_timeout: float = 10.0


# How long a refused connection keeps reading, so its peer can take the answer.
LINGER_SECONDS = 2.0


class RequestLineTooLong(h11.RemoteProtocolError):
    """A request line over its limit (h11 bounds only the head as a whole)."""


class _BoundedConnection(h11.Connection):
    """h11's server side that also bounds the request line, and keeps why it refused."""

    def __init__(self, max_head: int, max_request_line: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head)
        self.max_head = max_head
        self.max_request_line = max_request_line
        self.refusal: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = exc
            raise
        if isinstance(event, h11.Request):
            line = len(event.method) + len(event.target) + len(b"  HTTP/1.1")
            if line > self.max_request_line:
                self.refusal = RequestLineTooLong(
                    f"request line over {self.max_request_line} bytes")
                raise self.refusal
        return event


def _answer(status: HTTPStatus, text: str) -> bytes:
    """A complete response that ends the connection, written without h11.

    h11 will not send a response before a request has arrived, and a timed-out head has
    not arrived."""
    body = text.encode() + b"\n"
    return (f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-line limit, a head timeout and idle closes."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    conn: _BoundedConnection

    @classmethod
    def bound(cls, limits: HttpLimits) -> type[BoundedH11Protocol]:
        """This protocol with `limits`, as a class for `uvicorn.Config(http=...)`."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        max_head = self.config.h11_max_incomplete_event_size or 16 * 1024
        self.conn = _BoundedConnection(max_head, self.limits.max_request_line)
        self.head_timer: TimerHandle | None = None
        self.lingering = False  # refused: what still arrives is dropped until the close

    def connection_made(  # type: ignore[override]  # as uvicorn types it
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        # uvicorn starts the keep-alive clock only after a response; a connection that
        # never sends a request is idle from the start.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        super().data_received(data)
        # Waiting for the rest of a head: its time runs from its first byte, not its last.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(self.limits.header_timeout,
                                                       self._head_timed_out)
        else:
            self._stop_head_timer()  # the head is complete, upgraded, or refused

    def send_400_response(self, msg: str) -> None:
        """The answer to a head h11 refused: 431 when it was too large, else 400."""
        refusal = self.conn.refusal
        if refusal is not None and refusal.error_status_hint == 431:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                         f"request head over {self.conn.max_head} bytes")
        else:
            self._refuse(HTTPStatus.BAD_REQUEST, str(refusal or msg))

    def shutdown(self) -> None:
        if self.lingering:
            self.transport.close()
        else:
            super().shutdown()

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, "the request head took too long")

    def _refuse(self, status: HTTPStatus, text: str) -> None:
        """Answer and end the connection, reading (and dropping) what the peer still sends
        for a moment: closing on unread data resets the connection, and a reset can reach
        the client before it has read the answer."""
        log.info("refused a request from %s: %d %s", self.client and self.client[0],
                 status.value, text)
        self._stop_head_timer()
        self._unset_keepalive_if_required()
        self.lingering = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The head was fine and the app has the request; its body was not. The app
            # hears a disconnect, and a response it has begun cannot be followed by ours.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.abort()
                return
        self.transport.write(_answer(status, text))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
