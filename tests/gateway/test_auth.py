"""Every route but the public ones, and every socket, needs a valid token."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import jwt
import pytest
import websockets

from tests.conftest import Env
from tests.gateway.conftest import SECRET, Gateway, close_of, token


def forged() -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, "x" * 40,
                      algorithm="HS256")


def alg_none() -> str:
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f'{b64({"alg": "none", "typ": "JWT"})}.{b64({"sub": "alice", "exp": 9999999999})}.'


def tampered() -> str:
    head, body, sig = token("alice").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["admin"] = True
    new = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{new}.{sig}"


BAD_TOKENS = {
    "forged": forged,
    "expired": lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, SECRET,
                                  algorithm="HS256"),
    "alg_none": alg_none,
    "tampered": tampered,
    "garbage": lambda: "not-a-token",
}


@pytest.mark.parametrize("kind", [None, *BAD_TOKENS])
def test_bad_tokens_get_401(gateway: Gateway, kind: str | None) -> None:
    headers = {} if kind is None else {"Authorization": f"Bearer {BAD_TOKENS[kind]()}"}
    for path in ("/api/me", "/api/summary", "/api/recent", "/plot.png", "/metrics"):
        r = httpx.get(gateway.http + path, headers=headers)
        assert r.status_code == 401, (path, r.text)


def test_a_token_works_as_header_query_or_cookie(gateway: Gateway) -> None:
    t = token("alice", admin=True)
    by_header = httpx.get(gateway.http + "/api/me", headers={"Authorization": f"Bearer {t}"})
    assert by_header.json() == {"user": "alice", "admin": True, "connections": 0}
    assert httpx.get(gateway.http + "/api/me", params={"token": t}).json()["user"] == "alice"
    login = httpx.get(gateway.http + "/", params={"token": t})
    assert login.status_code == 303
    assert login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    jar = httpx.Cookies({"token": t})
    page = httpx.get(gateway.http + "/", cookies=jar)
    assert "live model errors" in page.text
    assert httpx.get(gateway.http + "/").text.count("Access token") == 1  # the login page
    # Tokens never reach a log line, the access log included.
    assert t not in gateway.role.output()
    assert "token=***" in gateway.role.output()


def test_public_routes(gateway: Gateway) -> None:
    health = httpx.get(gateway.http + "/healthz")
    assert health.status_code == 200
    assert health.json()["redis"] is True
    assert health.json()["rabbitmq"] is True
    assert httpx.get(gateway.http + "/static/style.css").status_code == 200
    assert httpx.get(gateway.http + "/openapi.json").json()["info"]["title"] == "mlpulse gateway"


async def ws_refusal(url: str, origin: str | None = None) -> int:
    """The HTTP status that refused a handshake (refusals come before the upgrade)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, origin=origin):  # type: ignore[arg-type]
            pass
    return refused.value.response.status_code


@pytest.mark.parametrize("kind", [None, *BAD_TOKENS])
async def test_bad_tokens_refuse_the_handshake_with_401(gateway: Gateway,
                                                        kind: str | None) -> None:
    url = gateway.ws if kind is None else f"{gateway.ws}?token={BAD_TOKENS[kind]()}"
    assert await ws_refusal(url, origin=gateway.origin) == 401


async def test_foreign_origin_is_refused(gateway: Gateway) -> None:
    url = f"{gateway.ws}?token={token('alice')}"
    assert await ws_refusal(url, origin="http://evil.example") == 403
    async with websockets.connect(url, origin=gateway.origin) as ws:  # type: ignore[arg-type]
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "hello"
        assert set(hello["streams"]) == {"broadcast", "user"}
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["type"] == "snapshot"
        assert first["data"]["full"] is True
        await ws.send('{"type": "ping"}')
        pong = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert pong["type"] == "pong"
        assert "offset" not in pong, "a pong is for this socket only, in no stream"


async def test_connection_cap_and_rate_limit(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway({"MLPULSE_WS_MAX_PER_USER": "2", "MLPULSE_WS_RATE": "5",
                        "MLPULSE_WS_BURST": "5"})
    url = f"{gw.ws}?token={token('bob')}"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        await a.recv()
        await b.recv()
        assert await ws_refusal(url) == 429  # a third socket for bob
        for _ in range(20):
            await a.send('{"type":"ping"}')
        code, reason = await close_of(a)
        assert code == 1008
        assert "rate" in reason
    # Oversized frames are refused by the server's frame limit.
    async with websockets.connect(url) as c:
        await c.recv()
        await c.send("x" * 200_000)
        assert (await close_of(c))[0] == 1009


def test_login_url_signs_in_on_later_starts_and_the_start_line_says_how(
        gateway: Gateway, env: Env) -> None:
    ready = gateway.role.lines[gateway.role.wait_for(r"ready: http")]
    assert "mlpulse login-url" in ready
    done = subprocess.run(
        [sys.executable, "-m", "mlpulse", "login-url"], capture_output=True, text=True,
        env={**os.environ, **env.vars, "MLPULSE_HTTP_PORT": str(gateway.port)}, timeout=60,
        check=True)
    url = done.stdout.strip()
    assert url.startswith(f"http://localhost:{gateway.port}/?token=")
    with httpx.Client(base_url=gateway.http) as client:
        opened = client.get(url.replace("localhost", "127.0.0.1"), follow_redirects=False)
        assert opened.status_code in (302, 303, 307)
        me = client.get("/api/me")
    assert me.status_code == 200
    assert me.json()["user"] == "admin"
    assert me.json()["admin"] is True


def test_a_taken_port_is_named_with_how_to_pick_another(env: Env) -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))  # where the gateway would listen
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "mlpulse", "gateway"], capture_output=True, text=True,
            env={**os.environ, **env.vars, "MLPULSE_HTTP_PORT": str(port)}, timeout=60,
            check=False)
    assert done.returncode == 1
    assert f"port {port} is already in use" in done.stderr
    assert f"MLPULSE_HTTP_PORT={port + 1}" in done.stderr
    assert "Errno" not in done.stderr
    assert "Traceback" not in done.stderr
