"""Process plumbing every role shares: logging and a graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from mlpulse.config import Settings
from mlpulse.redact import RedactingFormatter

log = logging.getLogger(__name__)

# A role gets this long to finish its batch in hand and flush after a stop signal.
STOP_GRACE_SECONDS = 20.0


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
        from mlpulse.metrics import serve

        serve(settings.metrics_port, settings.http_host)
    # uvloop (installed with uvicorn[standard]) makes every socket and timer cheaper.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_main(role, body, settings))


async def _main(role: str, body: RoleBody, settings: Settings) -> None:
    from mlpulse.health import beat_forever

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(body(settings, stop))
    heartbeat = asyncio.create_task(beat_forever(settings, role, stop))

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            task.cancel()
            return
        log.info("%s: %s stops after the batch in hand", signal.Signals(signum).name, role)
        stop.set()
        loop.call_later(STOP_GRACE_SECONDS, task.cancel)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await task
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        log.warning("%s did not stop within %.0fs; unacked messages return to their queues",
                    role, STOP_GRACE_SECONDS)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(heartbeat, 5)
    log.info("%s stopped", role)
