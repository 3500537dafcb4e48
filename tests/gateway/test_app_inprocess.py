"""The gateway's FastAPI app in-process: auth on every route, /healthz, task ownership,
security headers. The app runs on a real Redis (the tests' db), without Uvicorn."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mlpulse import task_queue
from mlpulse.config import Settings
from mlpulse.gateway.actualizer import Actualizer
from mlpulse.gateway.app import create_app
from mlpulse.gateway.auth import issue_token
from mlpulse.gateway.deps import Gateway
from mlpulse.gateway.hub import Hub
from mlpulse.store import connect_redis
from tests.conftest import REDIS_DB, VHOST
from tests.gateway.conftest import SECRET

PROTECTED = ("/api/me", "/api/summary", "/api/tasks", "/api/history", "/metrics")


class Broker:
    """What the relay would say about RabbitMQ; a test may say it is down."""

    up = True

    def __call__(self) -> bool:
        return self.up


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = Settings(
        amqp_url=f"amqp://guest:guest@localhost:5672/{VHOST}", redis_url=f"redis://localhost:6379/{REDIS_DB}",
        secret=SECRET, metrics_public=False, log_dir=tmp_path / "logs",
        data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    redis = await connect_redis(settings)
    await redis.flushdb()
    hub = Hub(settings.ws_outbox)
    # The Celery client connects only when a task is sent; none is here.
    celery = task_queue.make_celery(settings)
    try:
        yield Gateway(settings, SECRET.encode(), hub, redis, Actualizer(redis, hub), Broker(),
                      celery)
    finally:
        celery.close()
        await redis.aclose()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def bearer(user: str, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(secret.encode(), user)}"}


async def add_task(gateway: Gateway, owner: str) -> str:
    """A task record as the gateway writes one when it queues a task."""
    task_id = uuid.uuid4().hex
    record = task_queue.new_record(task_id, "report", owner, {"minutes": 60})
    await gateway.redis.hset(task_queue.record_key(task_id), mapping=record)
    await gateway.redis.zadd(task_queue.owner_key(owner), {task_id: time.time()})
    return task_id


@pytest.mark.parametrize("path", PROTECTED)
async def test_a_request_without_a_valid_token_gets_401(
        client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 401
    forged = bearer("alice", secret="another-secret-0123456789-abcdefghijklmnop")
    assert (await client.get(path, headers=forged)).status_code == 401
    assert (await client.get(path, headers={"Authorization": "Bearer "})).status_code == 401


@pytest.mark.parametrize("path", PROTECTED)
async def test_a_bearer_token_opens_each_route(client: httpx.AsyncClient, path: str) -> None:
    reply = await client.get(path, headers=bearer("alice"))
    assert reply.status_code == 200, reply.text


async def test_me_names_the_tokens_user_from_header_query_or_cookie(
        client: httpx.AsyncClient) -> None:
    token = issue_token(SECRET.encode(), "alice")
    by_header = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    by_query = await client.get("/api/me", params={"token": token})
    by_cookie = await client.get("/api/me", headers={"Cookie": f"token={token}"})
    for reply in (by_header, by_query, by_cookie):
        assert reply.status_code == 200
        assert reply.json() == {"user": "alice", "admin": False, "connections": 0}


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    reply = await client.get("/metrics", headers=bearer("ops"))
    assert reply.headers["content-type"].startswith("text/plain")
    assert "mlpulse_gateway_connections" in reply.text


async def test_healthz_is_public_and_says_what_it_checked(
        client: httpx.AsyncClient, gateway: Gateway) -> None:
    reply = await client.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok", "redis": True, "rabbitmq": True,
                            "connections": 0, "problems": {}}
    assert isinstance(gateway.broker_ok, Broker)
    gateway.broker_ok.up = False
    down = await client.get("/healthz")
    assert down.status_code == 503
    assert down.json()["status"] == "degraded"
    assert down.json()["rabbitmq"] is False


@pytest.mark.parametrize("task_id", [
    "0" * 31, "0" * 33, "A" * 32, "g" * 32, "not-a-task", "0" * 31 + "%00",
])
async def test_an_id_that_is_not_a_task_id_gets_404(
        client: httpx.AsyncClient, gateway: Gateway, task_id: str) -> None:
    # A record under the malformed id must not make it one.
    await gateway.redis.hset(task_queue.record_key(task_id), mapping=task_queue.new_record(
        task_id, "report", "alice", {}))
    for path in (f"/api/tasks/{task_id}", f"/api/tasks/{task_id}/result"):
        reply = await client.get(path, headers=bearer("alice"))
        assert reply.status_code == 404, (path, reply.text)


async def test_another_users_task_gets_404_as_if_it_did_not_exist(
        client: httpx.AsyncClient, gateway: Gateway) -> None:
    bobs = await add_task(gateway, "bob")
    mine = await client.get(f"/api/tasks/{bobs}", headers=bearer("bob"))
    assert mine.status_code == 200
    assert mine.json()["owner"] == "bob"
    assert mine.json()["state"] == "PENDING"
    assert [t["id"] for t in (await client.get("/api/tasks", headers=bearer("bob"))).json()] \
        == [bobs]

    nobody = await client.get(f"/api/tasks/{uuid.uuid4().hex}", headers=bearer("alice"))
    for path in (f"/api/tasks/{bobs}", f"/api/tasks/{bobs}/result"):
        theirs = await client.get(path, headers=bearer("alice"))
        assert theirs.status_code == 404
        assert theirs.json() == nobody.json(), "the answer must not tell a foreign id apart"
    assert (await client.get("/api/tasks", headers=bearer("alice"))).json() == []


@pytest.mark.parametrize(("path", "auth", "status"), [
    ("/healthz", False, 200),
    ("/api/me", False, 401),
    ("/api/me", True, 200),
    ("/api/tasks/nope", True, 404),
    ("/", False, 200),
    ("/static/app.js", False, 200),
])
async def test_every_response_carries_the_security_headers(
        client: httpx.AsyncClient, path: str, auth: bool, status: int) -> None:
    reply = await client.get(path, headers=bearer("alice") if auth else {})
    assert reply.status_code == status
    csp = reply.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["referrer-policy"] == "no-referrer"


async def test_the_favicon_answers_without_a_token(client: httpx.AsyncClient) -> None:
    reply = await client.get("/favicon.ico")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("image/svg+xml")
    assert reply.content.startswith(b"<svg")
