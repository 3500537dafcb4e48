"""Task-service fixtures: a gateway and real Celery workers on the test vhost and db."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from tests.conftest import Role, wait_until
from tests.gateway.conftest import Gateway, start_gateway, token

__all__ = ["start_gateway"]  # a fixture shared with the gateway tests

FEATURES = list(load_diabetes().feature_names)


@dataclass
class Api:
    """The gateway's HTTP API as one signed-in user."""

    gateway: Gateway
    user: str
    admin: bool = False

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.http, timeout=60,
                            headers={"Authorization": f"Bearer {token(self.user, self.admin)}"})

    def upload(self, kind: str, data: bytes, **fields: str) -> httpx.Response:
        with self.client() as c:
            return c.post(f"/api/tasks/{kind}", files={"file": ("rows.csv", data, "text/csv")},
                          data=fields or None)

    def post(self, kind: str, body: Any = None) -> httpx.Response:
        with self.client() as c:
            return c.post(f"/api/tasks/{kind}", json=body)

    def get(self, path: str) -> httpx.Response:
        with self.client() as c:
            return c.get(path)

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.get(f"/api/tasks/{task_id}")
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    def wait(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        """Poll until the task reaches a final state (a test has no event to await here)."""
        found: dict[str, Any] = {}

        def final() -> bool:
            found.update(self.task(task_id))
            return found["state"] in ("SUCCESS", "FAILURE")

        wait_until(final, timeout, what=f"task {task_id} to finish", interval=0.1)
        return found


@pytest.fixture
def api(start_gateway: Callable[..., Gateway]) -> Callable[..., Api]:
    """`api("alice")` signs in as alice against one gateway shared by the test."""
    gateway = start_gateway()
    return lambda user, admin=False: Api(gateway, user, admin)


@pytest.fixture
def worker(spawn: Callable[..., Role]) -> Callable[..., Role]:
    def start(concurrency: int = 2, extra: dict[str, str] | None = None) -> Role:
        return spawn("worker", "--concurrency", str(concurrency), extra=extra,
                     ready=r"ready\.")
    return start


def features_csv(rows: int, with_id: bool = True, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """`rows` rows of diabetes-like features (ids `r<n>`), and the feature matrix."""
    rng = np.random.default_rng(seed)
    X, _ = load_diabetes(return_X_y=True)
    data = X[rng.integers(0, len(X), rows)] + rng.normal(0, 0.01, (rows, X.shape[1]))
    out = io.StringIO()
    header = (["id"] if with_id else []) + FEATURES
    out.write(",".join(header) + "\n")
    for i, row in enumerate(data):
        cells = ([f"r{i}"] if with_id else []) + [repr(float(v)) for v in row]
        out.write(",".join(cells) + "\n")
    return out.getvalue().encode(), data




class Listener:
    """A WebSocket client in a thread that keeps every message it receives."""

    def __init__(self, gateway: Gateway, user: str, admin: bool = False) -> None:
        self.url = f"{gateway.ws}?token={token(user, admin)}"
        self.messages: list[str] = []
        self.ws: Any = None
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.opened.wait(10), "the WebSocket did not open"

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        with connect(self.url) as ws, contextlib.suppress(ConnectionClosed):
            self.ws = ws
            self.opened.set()
            for message in ws:
                self.messages.append(str(message))

    def events(self, kind: str) -> list[dict[str, Any]]:
        docs = [json.loads(m) for m in list(self.messages)]
        return [d for d in docs if d.get("type") == kind]

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)
