"""Beat pulls late labels from a third-party source; they join their predictions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from sklearn.datasets import load_diabetes

from tests.conftest import Env, Role, wait_until
from tests.tasks.conftest import Api

PAGE = 7


@dataclass
class Source:
    """A labelling service: cursor pages of JSON, or a CSV; optionally flaky."""

    labels: list[dict[str, object]]
    csv: str = ""
    flaky: bool = False
    requests: int = 0
    errors: int = 0
    stalls: int = 0
    cursors: list[str | None] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def source() -> Iterator[Source]:
    state = Source([])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            url = urlparse(self.path)
            after = parse_qs(url.query).get("after", [None])[0]
            if not url.path.endswith(".csv"):
                state.cursors.append(after)  # in the order asked, before any stall
            if state.flaky and state.requests % 3 == 0:
                state.errors += 1
                self.send_error(503, "busy")
                return
            if state.flaky and state.requests % 5 == 0:
                state.stalls += 1
                time.sleep(1.5)  # longer than the task's timeout
            if url.path.endswith(".csv"):
                body, kind = state.csv.encode(), "text/csv"
            else:
                start = int(after or 0)
                page = state.labels[start:start + PAGE]
                nxt = str(start + len(page)) if page else after
                body, kind = json.dumps({"labels": page, "next": nxt}).encode(), \
                    "application/json"
            try:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting, as it should

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _features(env: Env, prefix: str, n: int) -> list[float]:
    """Predictions-to-be without labels; returns the true values the source will send."""
    X, y = load_diabetes(return_X_y=True)
    ch = env.channel()
    ch.queue_declare(queue="features", durable=True)
    ch.basic_publish(exchange="", routing_key="features", body=json.dumps(
        [{"id": f"{prefix}{i}", "body": [float(v) for v in X[i]]} for i in range(n)]))
    ch.connection.close()
    return [float(v) for v in y[:n]]


def test_beat_pulls_labels_through_a_flaky_source_and_loses_none(
        env: Env, spawn: Callable[..., Role], worker: Callable[..., Role],
        source: Source) -> None:
    spawn("model")
    spawn("metric")
    truth = _features(env, "L", 50)
    source.labels = [{"id": f"L{i}", "y_true": v} for i, v in enumerate(truth)]
    source.flaky = True
    labels = {"MLPULSE_LABELS_URL": f"{source.url}/labels", "MLPULSE_LABELS_INTERVAL": "1",
              "MLPULSE_LABELS_TIMEOUT": "0.5"}
    worker(concurrency=1, extra=labels)
    spawn("beat", extra=labels, ready=r"ready: 2 periodic task")
    wait_until(lambda: env.row_count() >= 50, 120, what="50 labelled rows")
    rows = {r["id"]: r for r in env.rows()}
    assert sorted(rows) == sorted(f"L{i}" for i in range(50))
    assert env.row_count() == 50
    assert all(float(rows[f"L{i}"]["y_true"]) == v for i, v in enumerate(truth))
    assert source.errors >= 1
    assert source.stalls >= 1
    # Pages were asked for in order, each cursor the "next" of the page before it.
    cursors = [int(c or 0) for c in source.cursors]
    assert cursors == sorted(cursors)
    assert max(cursors) == 50  # after the last label, the source says there is nothing new


def test_a_csv_source_is_deduplicated_and_bad_rows_reported(
        env: Env, spawn: Callable[..., Role], worker: Callable[..., Role],
        api: Callable[..., Api], source: Source) -> None:
    spawn("model")
    spawn("metric")
    truth = _features(env, "C", 10)
    lines = ["id,y_true", *(f"C{i},{v}" for i, v in enumerate(truth)), "C3,999",
             "C10,not-a-number", f"C0,{truth[0]}"]
    source.csv = "\n".join(lines) + "\n"
    worker(concurrency=1, extra={"MLPULSE_LABELS_URL": f"{source.url}/labels.csv"})
    admin, user = api("root", admin=True), api("alice")
    assert user.post("collect-labels").status_code == 403
    task_id = admin.post("collect-labels").json()["id"]
    done = admin.wait(task_id)
    assert done["state"] == "SUCCESS", done
    assert done["result"]["published"] == 10
    assert done["result"]["bad"] == 1
    assert "row 12" in done["result"]["bad_rows"][0]
    wait_until(lambda: env.row_count() >= 10, what="10 labelled rows")
    rows = {r["id"]: float(r["y_true"]) for r in env.rows()}
    assert rows == {f"C{i}": v for i, v in enumerate(truth)}
    # A second pull finds nothing new.
    again = admin.wait(admin.post("collect-labels").json()["id"])
    assert again["result"]["published"] == 0
