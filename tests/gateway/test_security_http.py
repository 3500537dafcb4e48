"""The gateway's HTTP edge under attack: login CSRF, tokens in logs, odd task ids, /docs."""

from __future__ import annotations

import http.server
import io
import logging
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page
from websockets.sync.client import connect

from mlpulse.config import Settings
from mlpulse.runtime import configure_logging
from tests.conftest import Env, free_port
from tests.gateway.conftest import Gateway, token
from tests.gateway.test_dashboard import browser

__all__ = ["browser"]  # the Chromium fixture shared with the dashboard tests

# ---------------------------------------------------------------- login CSRF


def test_a_cross_site_login_link_does_not_swap_the_session(gateway: Gateway) -> None:
    alice, bob = token("alice"), token("bob")
    for site in ("cross-site", "same-site"):
        refused = httpx.get(gateway.http + "/", params={"token": bob},
                            headers={"Sec-Fetch-Site": site}, cookies={"token": alice})
        assert refused.status_code == 403, (site, refused.status_code)
        assert "set-cookie" not in refused.headers
        assert "another site" in refused.text
        assert "Access token" in refused.text  # the login page, with the sentence on it
    for site in (None, "none", "same-origin"):
        headers = {} if site is None else {"Sec-Fetch-Site": site}
        signed_in = httpx.get(gateway.http + "/", params={"token": bob}, headers=headers)
        assert signed_in.status_code == 303, site
        assert signed_in.headers["location"] == "/"
        assert f"token={bob}" in signed_in.headers["set-cookie"]


class _OtherSite:
    """A page on another site (localhost, where the gateway is 127.0.0.1) with one link."""

    def __init__(self, link: str) -> None:
        body = f'<!doctype html><a id="go" href="{link}">a prize</a>'.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_browser_following_a_foreign_login_link_stays_signed_in(
        gateway: Gateway, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{gateway.http}/?token={token('alice')}")
    page.wait_for_selector("#conn[data-state=live]")
    other = _OtherSite(f"{gateway.http}/?token={token('bob')}")
    try:
        page.goto(other.url)
        page.click("#go")
        page.wait_for_selector("text=another site")
    finally:
        other.close()
    me = page.evaluate("fetch('/api/me').then(r => r.json())")
    assert me["user"] == "alice"
    context.close()


# ---------------------------------------------------------------- tokens in logs


def _spellings(value: str) -> set[str]:
    """A token as it may appear in a URL: plain, percent-encoded once or twice."""
    once = "".join(f"%{b:02X}" for b in value.encode())
    return {value, once, once.replace("%", "%25"), urllib.parse.quote(value)}


def _leaks(output: str, secrets: list[str]) -> list[str]:
    decoded = output
    for _ in range(3):
        decoded = urllib.parse.unquote(decoded)
    found = []
    for secret in secrets:
        signature = secret.rsplit(".", 1)[-1]
        for text in (output, decoded):
            if any(s in text for s in _spellings(secret)) or signature in text:
                found.append(secret)
                break
    return found


def test_tokens_never_reach_the_gateway_output(gateway: Gateway) -> None:
    tokens = [token(f"user{i}") for i in range(9)]
    encoded = "".join(f"%{b:02X}" for b in tokens[3].encode())
    requests = [
        f"/?token={tokens[0]}",
        f"/api/me?tok%65n={tokens[1]}",
        f"/api/me?%74oken={tokens[2]}",
        f"/api/me?token={encoded}",
        f"/api/me?tok%2565n={tokens[4]}",  # double-encoded name
        f"/api/me?TOKEN={tokens[5]}",
        f"/?token={tokens[6][:-3]}abc",  # a bad login: the signature does not match
        f"/api/me?x=1&Access_Token={tokens[7]}",
    ]
    with httpx.Client(base_url=gateway.http) as client:
        answers = [client.get(path) for path in requests]
    assert answers[0].status_code == 303
    assert [a.status_code for a in answers[1:4]] == [200, 200, 200]
    assert answers[6].status_code == 401
    with connect(f"{gateway.ws}?tok%65n={tokens[8]}", origin=gateway.origin) as ws:  # type: ignore[arg-type]
        assert '"hello"' in str(ws.recv(10))
    assert gateway.role.stop() == 0
    output = gateway.role.output()
    assert "GET /api/me?" in output  # the access log is there
    assert _leaks(output, [*tokens, tokens[6][:-3] + "abc"]) == []


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_logger_of_a_role_is_redacted(log_format: str) -> None:
    secret = token("carol")
    stream = io.StringIO()
    saved_handlers, saved_level = logging.getLogger().handlers[:], logging.getLogger().level
    saved_stderr = sys.stderr
    sys.stderr = stream
    try:
        configure_logging(Settings(log_format=log_format), "gateway")  # type: ignore[call-arg]
        logging.getLogger("some.library").warning("GET /x?tok%%65n=%s done", secret)
        logging.getLogger("other").info("bearer %s", secret)
        try:
            raise ValueError(f"bad token {secret}")
        except ValueError:
            logging.getLogger("third").exception("failed on /?token=%s", secret)
    finally:
        sys.stderr = saved_stderr
        root = logging.getLogger()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    text = stream.getvalue()
    assert text.count("\n") >= 3
    assert _leaks(text, [secret]) == []


@pytest.mark.parametrize(("line", "kept"), [
    ("GET /?token=abc.def.ghi HTTP/1.1", "GET /?token=*** HTTP/1.1"),
    ("GET /?tok%65n=secret&x=1", "GET /?tok%65n=***&x=1"),
    ("GET /?%54OKEN=secret", "GET /?%54OKEN=***"),
    ("GET /api?id_token=s3cr3t;", "GET /api?id_token=***;"),
    ("no tokens here: x=1&y=2", "no tokens here: x=1&y=2"),
])
def test_redact_keeps_the_line_and_hides_the_value(line: str, kept: str) -> None:
    from mlpulse.redact import redact

    assert redact(line) == kept


# ---------------------------------------------------------------- task ids


def test_odd_task_ids_get_404_and_no_traceback(env: Env, gateway: Gateway) -> None:
    r = env.redis()
    hex_id = "0123456789abcdef0123456789abcdef"
    r.set(f"mlpulse:task:{hex_id}", "a string")
    r.set(f"mlpulse:task:{hex_id}:tick", 1)
    r.rpush("mlpulse:task:somelist", "x")
    r.sadd("mlpulse:task:someset", "x")
    # A listed id whose key is not a hash: the list skips it.
    r.zadd("mlpulse:tasks:alice", {hex_id: time.time()})
    r.set("mlpulse:tasks:bob", "not a sorted set")  # damage no request can repair
    r.close()
    headers = {"Authorization": f"Bearer {token('alice')}"}
    with httpx.Client(base_url=gateway.http, headers=headers) as client:
        for task_id in (f"{hex_id}:tick", hex_id, "somelist", "someset", "x" * 300,
                        "..%2F..%2Fetc", hex_id.upper()):
            for suffix in ("", "/result"):
                answer = client.get(f"/api/tasks/{task_id}{suffix}")
                assert answer.status_code == 404, (task_id, suffix, answer.text)
                assert "WRONGTYPE" not in answer.text
        listed = client.get("/api/tasks")
        assert listed.status_code == 200
        assert listed.json() == []
        damaged = client.get("/api/tasks", headers={"Authorization": f"Bearer {token('bob')}"})
        assert damaged.status_code == 500
        assert "WRONGTYPE" not in damaged.text
    output = gateway.role.output()
    assert "Traceback" not in output
    assert output.count("WRONGTYPE") == 1  # one line for the operator about bob's damaged key


# ---------------------------------------------------------------- /docs offline, under the CSP

_ASSET = re.compile(r'(?:src|href)="([^"]+)"')


def test_docs_reference_only_same_origin_assets(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.http) as client:
        docs = client.get("/docs")
        assert docs.status_code == 200
        csp = docs.headers["content-security-policy"]
        assert csp.startswith("default-src 'self'")
        assert "unsafe" not in csp
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", docs.text) is None, "inline script"
        assets = _ASSET.findall(docs.text)
        assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
        assert any(a.endswith("swagger-ui.css") for a in assets)
        for asset in assets:
            assert asset.startswith("/"), asset
            assert not asset.startswith("//"), asset
            fetched = client.get(asset)
            assert fetched.status_code == 200, asset
            assert len(fetched.content) > 0
        assert client.get("/redoc").status_code in (404, 401)


@pytest.fixture
def docs_page(gateway: Gateway, browser: Browser) -> Iterator[tuple[Page, list[str], list[str]]]:
    page = browser.new_page()
    foreign: list[str] = []
    violations: list[str] = []
    page.on("request", lambda req: None if req.url.startswith(gateway.http) or
            req.url.startswith("data:") else foreign.append(req.url))
    page.on("console", lambda msg: violations.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    page.add_init_script("document.addEventListener('securitypolicyviolation', e => "
                         "console.error('Content Security Policy: ' + e.violatedDirective "
                         "+ ' ' + e.blockedURI))")
    yield page, foreign, violations
    page.close()


def test_docs_render_offline_under_the_csp(gateway: Gateway,
                                           docs_page: tuple[Page, list[str], list[str]]
                                           ) -> None:
    page, foreign, violations = docs_page
    page.goto(gateway.http + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = page.eval_on_selector_all(
        ".opblock-summary-path", "els => els.map(e => e.getAttribute('data-path'))")
    assert "/api/tasks/batch-score" in paths
    assert "/api/me" in paths
    assert violations == []
    assert foreign == []
