"""Rules, silences and acknowledgements over the API: a real gateway, a real evaluator.

The first tests drive the evaluator with scripted signals and rules stored as the API
stores them; the rest go through `mlpulse gateway` (and `mlpulse alerts`) over HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from mlpulse.alerts.api_rules import RULES, create_rule
from mlpulse.alerts.evaluator import ACTIVE, Evaluator, read_alerts
from mlpulse.alerts.rules import RuleSet, parse_rule
from mlpulse.config import Settings
from tests.alerts.test_states import Scripted, outbox
from tests.conftest import REDIS_DB, Env, Role, wait_until
from tests.gateway.conftest import Gateway, start_gateway, token

__all__ = ["start_gateway"]  # the gateway fixture, shared with the gateway tests
BAD_OP = 'rule "X": op: must be one of >, >=, <, <= (got \'=>\')'


@pytest.fixture
def client(aredis: Any) -> Any:
    return aredis


def file_evaluator(client: Any, signals: Scripted) -> Evaluator:
    """An evaluator whose file has one rule, `High`, that never holds."""
    quiet = parse_rule({"name": "High", "metric": "mae", "op": ">", "threshold": 1e9})
    ev = Evaluator(client, Settings(redis_url=f"redis://localhost:6379/{REDIS_DB}"),
                   RuleSet([quiet], []))
    ev.signals = signals  # type: ignore[assignment]
    return ev


async def test_the_evaluator_reads_api_rules_at_each_round(client: Any) -> None:
    signals = Scripted()
    ev = file_evaluator(client, signals)
    signals.value = 60.0
    await ev.step(1000.0)
    assert (await read_alerts(client))["firing"] == []
    await create_rule(client, parse_rule({"name": "Made", "metric": "mae", "op": ">",
                                          "threshold": 50}))
    await ev.step(1005.0)
    (firing,) = (await read_alerts(client))["firing"]
    assert firing["rule"] == "Made"
    assert [n["alert"]["labels"]["alertname"] for n in await outbox(client)] == ["Made"]
    await client.hdel(RULES, "Made")
    await ev.step(1010.0)
    assert await client.hlen(ACTIVE) == 0  # a deleted rule's alerts go with it


async def test_a_stored_rule_that_cannot_be_read_is_skipped_and_said_once(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    signals = Scripted()
    ev = file_evaluator(client, signals)
    signals.value = 60.0
    await create_rule(client, parse_rule({"name": "Made", "metric": "mae", "op": ">",
                                          "threshold": 50}))
    await ev.step(1000.0)
    assert await client.hlen(ACTIVE) == 1
    await client.hset(RULES, "Made", orjson.dumps({"name": "Made", "metric": "mae",
                                                   "op": "=>", "threshold": 50}))
    await client.hset(RULES, "High", orjson.dumps({"name": "High", "metric": "mae",
                                                   "op": ">", "threshold": 1}))
    with caplog.at_level(logging.ERROR, logger="mlpulse.alerts.api_rules"):
        for now in (1005.0, 1010.0, 1015.0):
            await ev.step(now)
    said = sorted(r.getMessage() for r in caplog.records if r.name.endswith("api_rules"))
    assert said == ['API rule "High" is not evaluated: the rules file has a rule of that name',
                    f"API rule not evaluated: {BAD_OP.replace('X', 'Made')}"]
    (kept,) = (await read_alerts(client))["firing"]  # not dropped as if it were deleted
    assert (kept["rule"], kept["at"]) == ("Made", 1000.0)


# ---------------------------------------------------------------- over HTTP


Api = Callable[..., httpx.Client]


@pytest.fixture
def api() -> Iterator[Api]:
    """`api(gateway, "alice")`: alice's client of /api/alerts (no token for None)."""
    made: list[httpx.Client] = []

    def client_of(gateway: Gateway, user: str | None, admin: bool = False) -> httpx.Client:
        headers = {} if user is None else {
            "Authorization": f"Bearer {token(user, admin=admin)}"}
        made.append(httpx.Client(base_url=gateway.http + "/api/alerts", headers=headers,
                                 timeout=10))
        return made[-1]

    yield client_of
    for client in made:
        client.close()


RULE = {"name": "Made", "metric": "mae", "op": ">", "threshold": 50}
SILENCE = {"matchers": {"alertname": "FeatureDrift", "feature": "bmi"}, "duration": 3600,
           "comment": "retraining"}


def test_changes_need_an_admin_and_everything_a_token(
        start_gateway: Callable[..., Gateway], api: Api) -> None:
    gateway = start_gateway()
    alice, nobody = api(gateway, "alice"), api(gateway, None)
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("get", "/rules", None), ("post", "/rules", RULE), ("put", "/rules/Made", RULE),
        ("delete", "/rules/Made", None), ("post", "/silences", SILENCE),
        ("delete", "/silences/0123", None), ("post", "/ack/0123456789abcdef", None)]
    for method, path, body in calls:
        assert alice.request(method, path, json=body).status_code == 403, (method, path)
        assert nobody.request(method, path, json=body).status_code == 401, (method, path)
    refused = alice.post("/rules", json=RULE)
    assert refused.json() == {"detail": "only an admin can add alert rules"}
    assert alice.get("/silences").json() == []  # anyone signed in may read them
    assert nobody.get("/silences").status_code == 401


def test_a_bad_rule_gets_one_line_naming_the_rule_and_the_field(
        start_gateway: Callable[..., Gateway], api: Api) -> None:
    root = api(start_gateway(), "root", admin=True)
    bad = root.post("/rules", json={"name": "X", "metric": "psi", "op": "=>", "threshold": 1})
    assert (bad.status_code, bad.json()) == (422, {"detail": BAD_OP})
    for body, detail in (
            ({"metric": "mae", "op": ">", "threshold": 1}, "rule: name: is required"),
            ({**RULE, "window": 5}, 'rule "Made": window: must be 10 to '),
            ({**RULE, "colour": "red"}, 'rule "Made": colour: unknown key'),
            ([RULE], "rule: the body must be a JSON object")):
        answer = root.post("/rules", json=body)
        assert answer.status_code == 422
        assert answer.json()["detail"].startswith(detail)
    not_json = root.post("/rules", content=b"{name: X", headers={"Content-Type":
                                                                 "application/json"})
    assert not_json.status_code == 422
    assert not_json.json()["detail"].startswith("a rule: the body is not valid JSON")
    huge = root.post("/rules", json={**RULE, "pad": "x" * 20_000})
    assert huge.status_code == 413
    renamed = root.put("/rules/Made", json={**RULE, "name": "Other"})
    assert renamed.status_code == 422  # before 404: the body is wrong whatever is stored
    assert "name: must be 'Made' as in the path" in renamed.json()["detail"]
    assert [r["source"] for r in root.get("/rules").json()] == ["default"] * 6


def test_rules_are_made_listed_replaced_and_deleted(
        start_gateway: Callable[..., Gateway], api: Api) -> None:
    root = api(start_gateway(), "root", admin=True)
    made = root.post("/rules", json=RULE)
    assert made.status_code == 201
    assert made.headers["location"] == "/api/alerts/rules/Made"
    assert made.json() == {**RULE, "window": 300, "for": 0, "severity": "warning",
                           "model_version": "*", "notify": ["dashboard"], "source": "api"}
    listed = {r["name"]: r for r in root.get("/rules").json()}
    assert listed["Made"]["source"] == "api"
    assert listed["FeatureDrift"]["source"] == "default"
    again = root.post("/rules", json=RULE)
    assert again.status_code == 409
    assert "made over the API" in again.json()["detail"]
    default = root.post("/rules", json={**RULE, "name": "FeatureDrift"})
    assert default.status_code == 409
    assert "shipped defaults" in default.json()["detail"]

    replaced = root.put("/rules/Made", json={**RULE, "threshold": 70, "severity": "critical"})
    assert replaced.status_code == 200
    listed = {r["name"]: r for r in root.get("/rules").json()}
    assert (listed["Made"]["threshold"], listed["Made"]["severity"]) == (70, "critical")
    for method in ("put", "delete"):
        body = {**RULE, "name": "NoEvents"} if method == "put" else None
        refused = root.request(method, "/rules/NoEvents", json=body)
        assert refused.status_code == 409, method
        assert refused.json()["detail"].startswith(
            'rule "NoEvents" comes from mlpulse\'s shipped defaults and cannot be changed')
    assert root.put("/rules/Nobody", json={**RULE, "name": "Nobody"}).status_code == 404

    assert root.delete("/rules/Made").status_code == 204
    assert "Made" not in {r["name"] for r in root.get("/rules").json()}
    assert root.delete("/rules/Made").status_code == 404


def test_silences_are_made_listed_and_ended(start_gateway: Callable[..., Gateway],
                                            api: Api) -> None:
    gateway = start_gateway()
    root, alice = api(gateway, "root", admin=True), api(gateway, "alice")
    before = time.time()
    made = root.post("/silences", json=SILENCE)
    assert made.status_code == 201
    silence = made.json()
    assert set(silence) == {"id", "matchers", "starts_at", "ends_at", "by", "comment"}
    assert (silence["matchers"], silence["by"], silence["comment"]) == (
        SILENCE["matchers"], "root", "retraining")
    assert before <= silence["starts_at"] <= time.time()
    assert silence["ends_at"] == pytest.approx(silence["starts_at"] + 3600)
    assert alice.get("/silences").json() == [silence]
    for body, detail in (({**SILENCE, "matchers": {}}, "silence: matchers: must name at "),
                         ({**SILENCE, "duration": 0}, "silence: duration: "),
                         ({**SILENCE, "duration": 31 * 86400}, "silence: duration: "),
                         ({"duration": 60}, "silence: matchers: is required")):
        bad = root.post("/silences", json=body)
        assert bad.status_code == 422
        assert bad.json()["detail"].startswith(detail)
    assert root.delete(f"/silences/{silence['id']}").status_code == 204
    assert alice.get("/silences").json() == []
    assert root.delete(f"/silences/{silence['id']}").status_code == 404
    assert root.post("/ack/0123456789abcdef").status_code == 404


def test_a_rule_made_over_the_api_fires_in_a_running_evaluator(
        env: Env, spawn: Callable[..., Role], start_gateway: Callable[..., Gateway],
        api: Api) -> None:
    rules = Path(env.root) / "rules.yaml"
    rules.write_text("rules:\n  - {name: Slow, metric: mae, op: '>', threshold: 1000}\n")
    extra = {"MLPULSE_ALERT_RULES": str(rules), "MLPULSE_ALERT_INTERVAL": "0.5"}
    gateway = start_gateway(extra)
    spawn("alerts", extra=extra)
    root = api(gateway, "root", admin=True)
    assert [(r["name"], r["source"]) for r in root.get("/rules").json()] == [("Slow", "file")]
    made = root.post("/rules", json={"name": "Alive", "metric": "events_per_s", "op": ">=",
                                     "threshold": 0, "for": 0, "severity": "info"})
    assert made.status_code == 201

    def firing() -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = root.get(gateway.http + "/api/alerts").json()["firing"]
        return alerts

    wait_until(lambda: [a["rule"] for a in firing()] == ["Alive"], 10, "Alive to fire")
    (alive,) = firing()
    acked = root.post(f"/ack/{alive['fingerprint']}")
    assert acked.status_code == 200
    assert acked.json()["acked_by"] == "root"
    time.sleep(1.5)  # three rounds: the evaluator keeps the acknowledgement
    (alive,) = firing()
    assert alive["acked_by"] == "root"
    assert alive["at"] > acked.json()["at"]

    assert root.delete("/rules/Alive").status_code == 204
    wait_until(lambda: firing() == [], 10, "Alive to go with its rule")
