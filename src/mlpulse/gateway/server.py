"""`mlpulse gateway`: Uvicorn, the actualizer and the relay as three tasks in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import Generator

import uvicorn

from mlpulse.config import Settings
from mlpulse.gateway.actualizer import Actualizer
from mlpulse.gateway.app import create_app
from mlpulse.gateway.auth import issue_token, load_secret
from mlpulse.gateway.deps import Gateway
from mlpulse.gateway.hub import Hub
from mlpulse.gateway.protocols import BoundedH11Protocol, BoundedWebSocketProtocol, HttpLimits
from mlpulse.gateway.relay import Relay
from mlpulse.store import connect_redis
from mlpulse.taskbus import make_celery

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handlers: the role's stop event ends it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def login_banner(settings: Settings, secret: bytes) -> str:
    """The first-start line with a ready-to-click admin login URL."""
    token = issue_token(secret, "admin", admin=True, ttl=settings.login_ttl)
    return (f"\n  mlpulse is up. Sign in as admin (first start only):\n"
            f"    http://localhost:{settings.http_port}/?token={token}\n"
            f"  More tokens: mlpulse token --user NAME [--admin]\n")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the gateway until `stop`; if one of its tasks dies, fail loudly."""
    secret, first_start = load_secret(settings)
    redis = await connect_redis(settings)
    hub = Hub(settings.ws_outbox)
    actualizer = Actualizer(redis, hub)
    relay = Relay(settings, hub, redis)
    celery = make_celery(settings)
    gateway = Gateway(settings, secret, hub, redis, actualizer, relay.connected, celery)
    server = _Server(uvicorn.Config(
        create_app(gateway), host=settings.http_host, port=settings.http_port,
        log_config=None, lifespan="off", server_header=False,
        # h11 rather than uvicorn's default httptools, which buffers a head of any size.
        http=BoundedH11Protocol.bound(HttpLimits(
            max_request_line=settings.http_max_request_line,
            header_timeout=settings.http_header_timeout)),
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        timeout_keep_alive=math.ceil(settings.http_keepalive),  # uvicorn counts whole seconds
        ws=BoundedWebSocketProtocol,
        ws_max_size=settings.ws_max_frame_bytes, ws_ping_interval=20, ws_ping_timeout=20,
        # Messages are small JSON serialised once for every receiver; per-connection
        # compression would redo the work for each socket and cost more than it saves.
        ws_per_message_deflate=False,
    ))
    tasks = {
        asyncio.create_task(relay.run(stop), name="relay"),
        asyncio.create_task(actualizer.run(stop), name="actualizer"),
        asyncio.create_task(relay.keep_history(stop), name="history"),
    }
    try:
        await asyncio.wait_for(relay.ready.wait(), 30)
        await actualizer.step()
        tasks.add(asyncio.create_task(server.serve(), name="web"))
        while not server.started:
            await asyncio.sleep(0.05)
            if any(t.done() for t in tasks):
                break
        if first_start:
            sys.stdout.write(login_banner(settings, secret))
            sys.stdout.flush()
        log.info("ready: http://localhost:%d", settings.http_port)
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        # A task that returns once the stop is set has simply finished its work.
        died = [t for t in done if t is not stopping
                and (t.cancelled() or t.exception() is not None or not stop.is_set())]
        for t in died:
            log.error("gateway task %s ended unexpectedly: %r", t.get_name(),
                      t.exception() if not t.cancelled() else "cancelled")
        stop.set()
        await _shutdown(hub, server)
        for t in died:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if died:
            raise RuntimeError(f"gateway task {died[0].get_name()} stopped")
    finally:
        server.should_exit = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
        celery.close()


async def _shutdown(hub: Hub, server: uvicorn.Server) -> None:
    """Tell every client we are going away, then let Uvicorn finish."""
    closing = [c.close(CLOSE_GOING_AWAY, "server shutting down") for c in list(hub.clients)]
    await asyncio.gather(*closing, return_exceptions=True)
    server.should_exit = True
