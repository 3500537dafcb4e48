"""Process plumbing every role shares: logging and a graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from mlpulse.config import Settings
from mlpulse.redact import RedactingFormatter

log = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the role."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "role": self.role,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        msg_id = getattr(record, "msg_id", None)  # set through `extra=` where there is one
        if msg_id is not None:
            doc["msg_id"] = msg_id
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(settings: Settings, role: str) -> None:
    """Human-readable lines by default, JSON with MLPULSE_LOG_FORMAT=json; no tokens."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if settings.log_format == "json":
        formatter = JsonFormatter(role)
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                      "%H:%M:%S")
    # On the root handler, so every logger's lines are covered, the access log included.
    handler.setFormatter(RedactingFormatter(formatter))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("aiormq", "aio_pika", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


RoleBody = Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]]


def run_role(role: str, body: RoleBody, settings: Settings) -> None:
    """Run a role until it returns or a stop signal has let it finish within the grace time."""
    configure_logging(settings, role)
    if role != "gateway":  # the gateway serves /metrics on its own port
        from mlpulse.telemetry import serve

        serve(settings.metrics_port, settings.http_host)
    # uvloop (installed with uvicorn[standard]) makes every socket and timer cheaper.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_main(role, body, settings))
        # The role has stopped. Closing the loop, and then the interpreter, wait for the
        # loop's worker threads, and one stuck resolving a host that has gone (a compose
        # service stopped first) would hold the exit for seconds, until the stop bound
        # ended it as a failure. Past a short grace the process ends as it is, with 0.
        _end_after(CLOSE_GRACE)


async def _main(role: str, body: RoleBody, settings: Settings) -> None:
    """The role's body and its heartbeat, as one group: a crash in either ends the role."""
    from mlpulse.health import beat_forever

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: stopping now", name)
            main.cancel()
            return
        # Every role gets the signal on Ctrl-C; one line each would be noise.
        log.debug("%s: %s stops within %gs", name, role, settings.stop_timeout)
        stop.set()
        # What still runs near the bound is cancelled; the bound itself is kept by a
        # thread, which no stuck call on the event loop can hold up.
        loop.call_later(settings.stop_timeout * 0.8, main.cancel)
        _exit_after(settings.stop_timeout, role)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    async def run_body() -> None:
        try:
            await body(settings, stop)
        finally:
            stop.set()  # a body that ends by itself (a finite producer) ends the heartbeat

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(run_body(), name=role)
            group.create_task(beat_forever(settings, role, stop), name="heartbeat")
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        log.warning("%s was cut short to stop within %gs; unacked messages return to their "
                    "queues", role, settings.stop_timeout)
    except BaseExceptionGroup as failed:
        # Usually one task failed (in a group within a group): raise its error as itself,
        # so a clear one stays one line.
        sole: BaseException = failed
        while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
            sole = sole.exceptions[0]
        if sole is failed:
            raise
        raise sole from None
    log.info("%s stopped", role)


# Seconds a stopped role's process has to close its event loop and threads.
CLOSE_GRACE = 2.0


def _end_after(seconds: float) -> None:
    """End the process with 0 after `seconds` if it has not ended by then."""

    def end() -> None:
        log.debug("worker threads still busy %gs after the stop; exiting now", seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()


def _exit_after(seconds: float, role: str) -> None:
    """End the process after `seconds`, whatever the event loop is doing."""

    def expire() -> None:
        log.error("%s did not stop within %gs; exiting now, unacked messages return to their "
                  "queues", role, seconds)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
