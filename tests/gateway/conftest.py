"""Gateway fixtures: a real `mlpulse gateway` process on a free port, tokens, clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
import websockets
from playwright.sync_api import Browser, sync_playwright

from mlpulse.gateway.auth import issue_token
from tests.conftest import Env, Role, free_port

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium_browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright (no browser download is possible here)."""
    if CHROMIUM is None:
        if os.environ.get("MLPULSE_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("needs Debian's chromium package")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Gateway:
    """A running gateway and how to reach it."""

    role: Role
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def token(user: str, admin: bool = False, ttl: float = 3600) -> str:
    return issue_token(SECRET.encode(), user, admin=admin, ttl=ttl)


@pytest.fixture
def start_gateway(env: Env, spawn: Callable[..., Role]) -> Callable[..., Gateway]:
    env.vars["MLPULSE_SECRET"] = SECRET

    def start(extra: dict[str, str] | None = None) -> Gateway:
        port = free_port()
        role = spawn("gateway", extra={"MLPULSE_HTTP_PORT": str(port), **(extra or {})},
                     ready=r"ready: http")
        return Gateway(role, port)

    return start


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway()


def publish_event(env: Env, routing_key: str, doc: bytes) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    ch = conn.channel()
    ch.exchange_declare("mlpulse.events", exchange_type="topic", durable=True)
    ch.basic_publish("mlpulse.events", routing_key, doc)
    conn.close()


async def close_of(ws: Any, seconds: float = 10) -> tuple[int | None, str]:
    """Read until the server closes the socket; its close code and reason."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), seconds)
    except websockets.ConnectionClosed as closed:
        if closed.rcvd is None:
            return None, ""
        return closed.rcvd.code, closed.rcvd.reason


# What tests/gateway/layout_problems.js finds wrong with how a page fits its window.
LAYOUT_PROBLEMS = (Path(__file__).parent / "layout_problems.js").read_text()
WIDTHS = (390, 768, 1366, 1920)


def layout_problems(page: Any, width: int, height: int = 900) -> list[str]:
    """The page's layout problems once it is laid out at `width` CSS pixels."""
    page.set_viewport_size({"width": width, "height": height})
    page.evaluate("() => new Promise((done) => requestAnimationFrame(\n"
                  "  () => requestAnimationFrame(done)))")
    return [f"at {width} px: {p}" for p in page.evaluate(LAYOUT_PROBLEMS)]


def fits_every_width(page: Any) -> list[str]:
    """Layout problems at every width in WIDTHS; the page's own size is restored after."""
    size = page.viewport_size
    try:
        return [p for width in WIDTHS for p in layout_problems(page, width)]
    finally:
        page.set_viewport_size(size)
        page.evaluate("() => new Promise((done) => requestAnimationFrame(done))")
