"""Each user may have so many unfinished tasks and submit so many a minute, on every gateway."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import Env, Role
from tests.gateway.conftest import Gateway
from tests.tasks.conftest import Api, features_csv


def test_thirty_reports_at_once_get_ten_through_across_two_gateways(
        env: Env, start_gateway: Callable[..., Gateway]) -> None:
    one, two = start_gateway(), start_gateway()  # no worker: every task stays unfinished
    alice = [Api(one, "alice"), Api(two, "alice")]

    def submit(i: int) -> httpx.Response:
        return alice[i % 2].post("report", {"minutes": 5})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(submit, range(30)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 10 + [429] * 20, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "MLPULSE_TASKS_MAX_RUNNING" in refused.json()["detail"]
    assert "10 unfinished tasks" in refused.json()["detail"]
    # An upload over the limit is refused before its body is kept, and leaves nothing.
    data, _ = features_csv(20)
    over = alice[0].upload("batch-score", data)
    assert over.status_code == 429
    uploads = env.root / "data" / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    # Another user is not held back by alice.
    assert Api(two, "bob").post("report", {"minutes": 5}).status_code == 202
    assert len(alice[1].get("/api/tasks").json()) == 10


def test_the_per_minute_rate_holds_once_tasks_finish(
        env: Env, start_gateway: Callable[..., Gateway], worker: Callable[..., Role]) -> None:
    gateway = start_gateway({"MLPULSE_TASKS_PER_MINUTE": "4", "MLPULSE_TASKS_MAX_RUNNING": "2"})
    alice = Api(gateway, "alice")
    first = [alice.post("report", {"minutes": 5}) for _ in range(3)]
    assert [a.status_code for a in first] == [202, 202, 429]
    assert "MLPULSE_TASKS_MAX_RUNNING" in first[2].json()["detail"]
    worker(concurrency=1)
    for answer in first[:2]:
        assert alice.wait(answer.json()["id"])["state"] == "SUCCESS"
    more = [alice.post("report", {"minutes": 5}) for _ in range(3)]
    assert [a.status_code for a in more] == [202, 202, 429]
    detail = more[2].json()["detail"]
    assert "MLPULSE_TASKS_PER_MINUTE" in detail
    assert "4 tasks in the last minute" in detail
    assert 1 <= int(more[2].headers["Retry-After"]) <= 60


def test_a_lost_task_does_not_block_its_owner_for_ever(
        env: Env, start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway({"MLPULSE_TASKS_MAX_RUNNING": "2"})
    alice = Api(gateway, "alice")
    r = env.redis()
    # Two tasks submitted a day ago whose worker was lost: they never left PENDING.
    long_ago = time.time() - 86400
    for _ in range(2):
        task_id = uuid.uuid4().hex
        r.hset(f"mlpulse:task:{task_id}", mapping={
            "id": task_id, "kind": "report", "owner": "alice", "state": "PENDING",
            "submitted": repr(long_ago), "done": "0", "total": "0", "params": "{}"})
        r.zadd("mlpulse:tasks:alice", {task_id: long_ago})
    r.close()
    assert alice.post("report", {"minutes": 5}).status_code == 202
    assert alice.post("report", {"minutes": 5}).status_code == 202
    refused = alice.post("report", {"minutes": 5})
    assert refused.status_code == 429
