"""Waiting, done one way everywhere: for a stop or a timeout, for the first of several
events, on a schedule, with backoff, and for a service's port to answer again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mlpulse.errors import TRANSIENT_ERRORS

log = logging.getLogger(__name__)


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `stop`; True if it is set."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


async def first_of(*events: asyncio.Event) -> None:
    """Return as soon as any of `events` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def every(seconds: float, stop: asyncio.Event, step: Callable[[], Awaitable[object]],
                what: str) -> None:
    """Run `step` every `seconds` until `stop`; a transient failure is logged, not fatal."""
    while not await stopped_within(stop, seconds):
        try:
            await step()
        except TRANSIENT_ERRORS as exc:
            log.warning("%s failed, will retry: %r", what, exc)


class Backoff:
    """Delays that double from `first` up to `cap`, starting over after a success."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    def next(self) -> float:
        """The delay to wait now; the one after it is twice as long, up to the cap."""
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        """Start over from the first delay."""
        self.delay = self.first


async def until_port_answers(host: str, port: int, stop: asyncio.Event, seconds: float,
                             probe_every: float = 0.25, floor: float = 0.5) -> None:
    """Wait up to `seconds` (or for `stop`), returning early, but never before `floor`, once
    `host:port` accepts a TCP connection: a restarted service is tried again at once, and
    one whose port answers but which refuses us (credentials, limits) is not hammered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    if await stopped_within(stop, min(floor, seconds)):
        return
    while not stop.is_set() and loop.time() < deadline:
        try:
            async with asyncio.timeout(probe_every):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            await stopped_within(stop, min(probe_every, max(0.0, deadline - loop.time())))
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
