"""Liveness and the environment: role heartbeats in Redis, and `mlpulse doctor`.

Every long-running role refreshes `mlpulse:heartbeat:<role>:<host>` every few seconds
from its own event loop (or a thread, for Celery's roles), so a wedged process stops
beating. `mlpulse doctor --role NAME` is the container healthcheck: it passes while this
host's heartbeat for that role is fresh (for the gateway: while `/healthz` answers 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from mlpulse import keys
from mlpulse.config import Settings
from mlpulse.waiting import stopped_within

log = logging.getLogger(__name__)

BEAT_EVERY = 5.0
BEAT_TTL = 20
# The command word and the name a role beats under differ for one role.
ALIASES = {"produce": "producer"}
# What this process cannot do right now (a full disk, say), by what it concerns. Every
# heartbeat carries them, so `mlpulse doctor` and the gateway's /healthz can tell.
_problems: dict[str, str] = {}


def report_problem(what: str, text: str) -> None:
    """Say, until `clear_problem(what)`, that this process cannot do `what`."""
    _problems[what] = text


def clear_problem(what: str) -> bool:
    """Take back a problem; True if there was one."""
    return _problems.pop(what, None) is not None


def problems() -> list[str]:
    """This process's problems right now."""
    return list(_problems.values())


def heartbeat_key(role: str, host: str | None = None) -> str:
    """Where one host's heartbeat for a role lives."""
    return keys.heartbeat(role, host)


def _beat_value() -> str:
    return json.dumps({"pid": os.getpid(), "ts": time.time(), "problems": problems()})


async def beat_forever(settings: Settings, role: str, stop: asyncio.Event) -> None:
    """Refresh this role's heartbeat until `stop`; Redis outages only pause it."""
    client = redis.asyncio.Redis.from_url(str(settings.redis_url), socket_timeout=2,
                                          socket_connect_timeout=2)
    key = heartbeat_key(role)
    try:
        while not stop.is_set():
            try:
                await client.set(key, _beat_value(), ex=BEAT_TTL)
            except (redis.RedisError, OSError) as exc:
                log.debug("heartbeat not written (%r)", exc)
            await stopped_within(stop, BEAT_EVERY)
        with contextlib.suppress(redis.RedisError, OSError):
            await client.delete(key)
    finally:
        await client.aclose()


def beat_in_thread(settings: Settings, role: str) -> threading.Event:
    """The same for a process without an event loop; set the returned event to stop."""
    stop = threading.Event()

    def run() -> None:
        client = redis.Redis.from_url(str(settings.redis_url), socket_timeout=5)
        key = heartbeat_key(role)
        while not stop.is_set():
            try:
                client.set(key, _beat_value(), ex=BEAT_TTL)
            except (redis.RedisError, OSError) as exc:
                log.debug("heartbeat not written (%r)", exc)
            stop.wait(BEAT_EVERY)
        with contextlib.suppress(redis.RedisError, OSError):
            client.delete(key)
        client.close()

    threading.Thread(target=run, name=f"{role}-heartbeat", daemon=True).start()
    return stop


def role_is_alive(settings: Settings, role: str) -> tuple[bool, str]:
    """The healthcheck of one role on this host."""
    role = ALIASES.get(role, role)
    if role == "gateway":
        import httpx

        url = f"http://127.0.0.1:{settings.http_port}/healthz"
        try:
            response = httpx.get(url, timeout=5)
        except httpx.HTTPError as exc:
            return False, f"{url} did not answer ({exc})"
        return response.status_code == 200, f"{url} answered {response.status_code}"
    client = redis.Redis.from_url(str(settings.redis_url), socket_timeout=5)
    try:
        raw = client.get(heartbeat_key(role))
    except (redis.RedisError, OSError) as exc:
        return False, f"Redis is unreachable ({exc})"
    finally:
        client.close()
    if raw is None:
        return False, f"no heartbeat from {role} on {socket.gethostname()} in {BEAT_TTL}s"
    beat = json.loads(raw)
    seen = f"{role} (pid {beat['pid']}) beat {time.time() - beat['ts']:.1f}s ago"
    trouble = beat.get("problems") or []
    if trouble:
        return False, f"{seen}, and reports: {'; '.join(trouble)}"
    return True, seen


async def role_problems(client: redis.asyncio.Redis) -> dict[str, list[str]]:
    """The problems every live role reports, by `<role>:<host>`."""
    names = [k async for k in client.scan_iter(match=heartbeat_key("*", "*"), count=200)]
    return _problems_by_role(names, await client.mget(names) if names else [])


def _problems_by_role(names: list[Any], beats: list[Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, raw in zip(names, beats, strict=True):
        trouble = json.loads(raw).get("problems") if raw is not None else None
        if trouble:
            name = key.decode() if isinstance(key, bytes) else str(key)
            found[name.removeprefix(keys.HEARTBEAT)] = list(trouble)
    return found


def role_of_pid1() -> str | None:
    """In a container, the role PID 1 runs (`mlpulse <role> …`)."""
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [a.decode(errors="replace") for a in argv if a]
    for i, word in enumerate(words[:-1]):
        if word.endswith("mlpulse"):
            return words[i + 1]
    return None


@dataclass
class Check:
    """One line of `mlpulse doctor`."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = True


def run_checks(settings: Settings) -> list[Check]:
    """Everything a fresh machine needs, each with what to do when it is missing."""
    checks = [_rabbitmq(settings), _redis(settings), _port(settings)]
    for label, path in (("log dir", settings.log_dir), ("data dir", settings.data_dir),
                        ("models dir", settings.models_dir)):
        checks.append(_writable(label, path))
    checks.append(_model(settings))
    if checks[1].ok:
        checks.append(_roles(settings))
    return checks


def _roles(settings: Settings) -> Check:
    client = redis.Redis.from_url(str(settings.redis_url), socket_timeout=5)
    try:
        names = list(client.scan_iter(match=heartbeat_key("*", "*"), count=200))
        found = _problems_by_role(names, client.mget(names) if names else [])
    except (redis.RedisError, OSError) as exc:
        return Check("roles", False, f"heartbeats unreadable ({exc})", "check Redis")
    finally:
        client.close()
    if found:
        detail = "; ".join(f"{who}: {', '.join(what)}" for who, what in sorted(found.items()))
        return Check("roles", False, detail, "see the role's log for what it is waiting on")
    return Check("roles", True, f"{len(names)} running, none reports a problem")


def _rabbitmq(settings: Settings) -> Check:
    from mlpulse.broker import connect
    from mlpulse.errors import ServiceUnavailable

    async def probe() -> None:
        connection = await connect(settings, "doctor", robust=False)
        await connection.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 10))
    except ServiceUnavailable as exc:
        # The message says what is wrong, then what to do: one line each.
        what, _, fix = str(exc).partition(". ")
        return Check("RabbitMQ", False, what, fix)
    except (TimeoutError, OSError) as exc:
        return Check("RabbitMQ", False, f"no answer ({exc.__class__.__name__})",
                     "start it: rabbitmq-server -detached (or docker compose up rabbitmq)")
    return Check("RabbitMQ", True, "reachable")


def _redis(settings: Settings) -> Check:
    client = redis.Redis.from_url(str(settings.redis_url), socket_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return Check("Redis", False, f"{exc}",
                     "start it: redis-server --daemonize yes (or docker compose up redis)")
    finally:
        client.close()
    return Check("Redis", True, "reachable")


def _port(settings: Settings) -> Check:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((settings.http_host, settings.http_port))
        except OSError:
            if _serves_mlpulse(settings.http_port):
                return Check("HTTP port", True,
                             f"{settings.http_port} serves a running mlpulse gateway")
            return Check("HTTP port", False, f"{settings.http_port} is in use",
                         "stop what holds it, or set MLPULSE_HTTP_PORT to a free port",
                         blocking=False)
    return Check("HTTP port", True, f"{settings.http_port} is free")


def _serves_mlpulse(port: int) -> bool:
    """Whether the port answers /healthz the way an mlpulse gateway does."""
    import httpx

    try:
        reply = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)
        body = reply.json()
    except (httpx.HTTPError, ValueError):
        return False
    return isinstance(body, dict) and {"status", "redis", "rabbitmq"} <= body.keys()


def _writable(label: str, path: Path) -> Check:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return Check(label, False, f"{path}: {exc.strerror}",
                     f"create it and make it writable, or set MLPULSE_{label.split()[0].upper()}"
                     "_DIR")
    return Check(label, True, f"{path} is writable")


def _model(settings: Settings) -> Check:
    from mlpulse.ml.meta import versions

    found = versions(settings.models_dir)
    if not found:
        return Check("model", False, f"no model in {settings.models_dir}",
                     "`mlpulse model` trains v1 at its first start", blocking=False)
    return Check("model", True, f"v{found[-1]} is the latest of {len(found)}")
