"""`mlpulse gateway`: Uvicorn, the actualizer and the relay as three tasks in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
import sys
from collections.abc import Generator

import uvicorn

from mlpulse.config import Settings
from mlpulse.errors import MlpulseError
from mlpulse.gateway.actualizer import Actualizer
from mlpulse.gateway.alerts_view import AlertsView
from mlpulse.gateway.app import create_app
from mlpulse.gateway.auth import issue_token, load_secret
from mlpulse.gateway.deps import Gateway
from mlpulse.gateway.drift_view import DriftView
from mlpulse.gateway.hub import Hub
from mlpulse.gateway.protocols import BoundedH11Protocol, HttpLimits
from mlpulse.gateway.relay import Relay
from mlpulse.gateway.sockets import CLOSE_GOING_AWAY, Connection, close_all, keepalive
from mlpulse.store import connect_redis
from mlpulse.task_queue import make_celery

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handlers (the role's stop event ends it), saying
    when it listens with an event rather than a flag."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Uvicorn's start-up, then the event."""
        await super().startup(sockets)
        if self.started:
            self.listening.set()


def login_banner(settings: Settings, secret: bytes) -> str:
    """The first-start line with a ready-to-click admin login URL."""
    token = issue_token(secret, "admin", admin=True, ttl=settings.login_ttl)
    return (f"\n  mlpulse is up. Sign in as admin (first start only):\n"
            f"    http://localhost:{settings.http_port}/?token={token}\n"
            f"  Later: mlpulse login-url; more tokens: mlpulse token --user NAME [--admin]\n")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the gateway until `stop`; a crash in any of its tasks ends it loudly."""
    secret, first_start = load_secret(settings)
    async with contextlib.AsyncExitStack() as stack:
        # The port first: a taken one is said plainly before anything else starts.
        listening = stack.enter_context(listen(settings))
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        celery = make_celery(settings)
        stack.callback(celery.close)
        hub = Hub(settings.ws_outbox)
        actualizer = Actualizer(redis, hub, drift=DriftView(redis, settings),
                                alerts=AlertsView(redis))
        relay = Relay(settings, hub, redis)
        gateway = Gateway(settings, secret, hub, redis, actualizer, relay.connected, celery)
        server = _Server(_uvicorn_config(settings, gateway))
        async with asyncio.TaskGroup() as group:
            group.create_task(relay.run(stop), name="relay")
            group.create_task(relay.keep_history(stop), name="history")
            await asyncio.wait_for(relay.ready.wait(), 30)
            await actualizer.step()
            group.create_task(actualizer.run(stop), name="actualizer")
            group.create_task(keepalive(hub, stop), name="keepalive")
            group.create_task(_serve_web(server, hub, stop, listening), name="web")
            await server.listening.wait()  # a web server that fails ends the group instead
            if first_start:
                sys.stdout.write(login_banner(settings, secret))
                sys.stdout.flush()
            log.info("ready: http://localhost:%d%s", settings.http_port,
                     "" if first_start else " (a login link: mlpulse login-url)")


def _uvicorn_config(settings: Settings, gateway: Gateway) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(gateway), host=settings.http_host, port=settings.http_port,
        log_config=None, lifespan="off", server_header=False,
        # h11 rather than uvicorn's default httptools, which buffers a head of any size.
        http=BoundedH11Protocol.bound(HttpLimits(
            max_request_line=settings.http_max_request_line,
            header_timeout=settings.http_header_timeout)),
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        timeout_keep_alive=math.ceil(settings.http_keepalive),  # uvicorn counts whole seconds
        # Requests still open at a stop get half the role's stop bound, then are cut.
        timeout_graceful_shutdown=max(1, math.floor(settings.stop_timeout / 2)),
        # Upgrade requests go to the gateway's own WebSocket protocol (sockets.Connection).
        # It negotiates no compression: one frame serves every socket, and per-connection
        # compression would redo the work for each of them.
        ws=Connection.bound(gateway),
    )


def listen(settings: Settings) -> socket.socket:
    """The gateway's bound socket (Uvicorn serves on it), or one line saying why not."""
    host, port = settings.http_host, settings.http_port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise MlpulseError(
                f"port {port} is already in use (another gateway, or another program); "
                f"stop what holds it, or pick another port, e.g. "
                f"MLPULSE_HTTP_PORT={port + 1 if port < 65535 else 8081}") from None
        raise MlpulseError(f"cannot listen on {host}:{port}: {exc.strerror} "
                           "(set MLPULSE_HTTP_HOST or MLPULSE_HTTP_PORT)") from None
    sock.set_inheritable(True)
    return sock


async def _serve_web(server: uvicorn.Server, hub: Hub, stop: asyncio.Event,
                     sock: socket.socket) -> None:
    """Uvicorn until `stop`; then every client is told we are going away, and it ends."""
    async with asyncio.TaskGroup() as group:
        web = group.create_task(server.serve(sockets=[sock]), name="uvicorn")
        stopping = group.create_task(stop.wait(), name="stopping")
        await asyncio.wait({web, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            stopping.cancel()
            raise RuntimeError("the web server stopped by itself")
        close_all(hub, CLOSE_GOING_AWAY, "server shutting down")
        server.should_exit = True
