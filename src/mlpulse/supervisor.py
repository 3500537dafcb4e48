"""`mlpulse up`: every role as a child process, logs prefixed, crashes restarted, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Past each role's own stop bound, how long to wait before killing a child that is stuck.
STOP_MARGIN_SECONDS = 5.0
COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")


@dataclass
class Child:
    """One supervised role process."""

    name: str
    argv: list[str]
    color: str
    restart_finished: bool = True
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: float = field(default=0.0)


def _prefix(child: Child, width: int) -> bytes:
    label = child.name.ljust(width)
    if sys.stdout.isatty():
        return f"\x1b[{child.color}m{label} |\x1b[0m ".encode()
    return f"{label} | ".encode()


class Supervisor:
    """Starts children, relays their output, restarts crashes, stops them all on a signal."""

    def __init__(self, children: list[Child], stop_timeout: float) -> None:
        self.children = children
        self.stop_seconds = stop_timeout + STOP_MARGIN_SECONDS
        self.width = max(len(c.name) for c in children)
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        """Run until SIGINT/SIGTERM; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        watchers = [asyncio.create_task(self._keep(c), name=c.name) for c in self.children]
        await self.stopping.wait()
        log.info("stopping %d processes", len(self.children))
        for c in self.children:
            if c.proc and c.proc.returncode is None:
                c.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*watchers), self.stop_seconds)
        except TimeoutError:
            for c in self.children:
                if c.proc and c.proc.returncode is None:
                    log.warning("%s did not stop in %.0fs; killing it", c.name,
                                self.stop_seconds)
                    c.proc.kill()
            await asyncio.gather(*watchers, return_exceptions=True)
        return 0

    async def _keep(self, child: Child) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            child.started = time.monotonic()
            child.proc = await asyncio.create_subprocess_exec(
                *child.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
                env={**os.environ, "PYTHONUNBUFFERED": "1", **child.env},
            )
            await self._relay(child)
            code = await child.proc.wait()
            if self.stopping.is_set():
                return
            if code == 0 and not child.restart_finished:
                log.info("%s finished", child.name)
                return
            if time.monotonic() - child.started > 30:
                delay = 1.0
            child.restarts += 1
            log.warning("%s exited with code %s; restarting in %.0fs (restart %d)",
                        child.name, code, delay, child.restarts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            delay = min(delay * 2, 30.0)

    async def _relay(self, child: Child) -> None:
        assert child.proc is not None
        assert child.proc.stdout is not None
        prefix = _prefix(child, self.width)
        out = sys.stdout.buffer
        while True:
            line = await child.proc.stdout.readline()
            if not line:
                return
            out.write(prefix + line)
            out.flush()


def plan_children(roles: list[tuple[str, list[str]]], scale: dict[str, int],
                  finite: set[str], metrics_port: int | None = None) -> list[Child]:
    """One child per role (or `scale[role]` of them), each with its own colour.

    With a metrics port, each child serves its metrics on the next port up from it."""
    children: list[Child] = []
    for i, (role, args) in enumerate(roles):
        n = scale.get(role, 1)
        for k in range(n):
            name = role if n == 1 else f"{role}.{k + 1}"
            argv = [sys.executable, "-m", "mlpulse", role, *args]
            env = {}
            if metrics_port and role != "gateway":
                env["MLPULSE_METRICS_PORT"] = str(metrics_port + len(children))
            children.append(Child(name, argv, COLORS[i % len(COLORS)],
                                  restart_finished=role not in finite, env=env))
    return children
