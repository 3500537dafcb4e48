"""The evaluator's state machine against a real Redis, with the signals scripted."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mlpulse.alerts.evaluator import ACTIVE, HISTORY, LEASE, OUTBOX, Evaluator, read_alerts
from mlpulse.alerts.rules import RuleSet, Webhook, parse_rule
from mlpulse.alerts.signals import Series
from mlpulse.config import Settings
from tests.conftest import REDIS_DB


class Scripted:
    """Signals whose value the test sets."""

    def __init__(self) -> None:
        self.value: float | None = None

    async def series(self, rule: Any, now: float) -> list[Series]:
        return [Series({"model_version": "v1"}, self.value, rule.threshold)]


@pytest.fixture
def client(aredis: Any) -> Any:
    return aredis


def evaluator(client: Any, signals: Scripted, for_: int = 10) -> Evaluator:
    rule = parse_rule({"name": "High", "metric": "mae", "op": ">", "threshold": 50,
                       "for": for_, "notify": ["dashboard", "webhook"]})
    hook = Webhook.model_validate({"url": "http://127.0.0.1:9/hook"})
    ev = Evaluator(client, Settings(redis_url=f"redis://localhost:6379/{REDIS_DB}"),
                   RuleSet([rule], [hook]))
    ev.signals = signals  # type: ignore[assignment]
    return ev


async def outbox(client: Any) -> list[dict[str, Any]]:
    return [orjson.loads(n) for n in await client.lrange(OUTBOX, 0, -1)]


async def test_pending_fires_after_for_and_resolves_once(client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals)
    signals.value = 60.0
    await ev.step(1000.0)
    assert (await read_alerts(client))["pending"][0]["rule"] == "High"
    await ev.step(1005.0)
    assert await outbox(client) == []  # not yet held for 10 s
    await ev.step(1010.0)
    firing = await outbox(client)
    assert [n["kind"] for n in firing] == ["dashboard", "webhook"]
    assert firing[1]["alert"]["status"] == "firing"
    await ev.step(1015.0)
    assert len(await outbox(client)) == 2  # still firing: nothing new
    signals.value = 40.0
    await ev.step(1020.0)
    notes = await outbox(client)
    assert [n["alert"]["status"] for n in notes] == ["firing"] * 2 + ["resolved"] * 2
    assert len({n["key"] for n in notes if n["kind"] == "webhook"}) == 2
    history = [orjson.loads(h)["to"] for h in await client.lrange(HISTORY, 0, -1)]
    assert history == ["resolved", "firing", "pending"]
    assert await client.hlen(ACTIVE) == 0


async def test_a_condition_that_stops_while_pending_notifies_nobody(client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals)
    signals.value = 60.0
    await ev.step(1000.0)
    signals.value = None  # no data is no condition
    await ev.step(1003.0)
    assert await outbox(client) == []
    assert await client.hlen(ACTIVE) == 0


async def test_a_restarted_or_new_evaluator_does_not_fire_again(client: Any) -> None:
    signals = Scripted()
    first = evaluator(client, signals, for_=0)
    signals.value = 60.0
    await first.step(1000.0)
    assert len(await outbox(client)) == 2
    await client.delete(LEASE)  # the first one is gone; its lease lapsed
    second = evaluator(client, signals, for_=0)
    await second.step(1005.0)
    await second.step(1010.0)
    assert len(await outbox(client)) == 2
    assert (await read_alerts(client))["firing"][0]["since"] == 1000.0


async def test_an_evaluator_that_lost_its_lease_writes_nothing(client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals, for_=0)
    signals.value = 60.0
    assert await ev.hold_lease()
    await client.set(LEASE, "someone-else")
    assert await ev.step(1000.0) is None
    assert await client.hlen(ACTIVE) == 0
    assert await outbox(client) == []


async def test_a_pending_alert_that_stops_is_kept_in_history_and_notifies_nobody(
        client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals)
    signals.value = 60.0
    await ev.step(1000.0)
    signals.value = 10.0
    await ev.step(1003.0)
    history = [orjson.loads(h)["to"] for h in await client.lrange(HISTORY, 0, -1)]
    assert history == ["inactive", "pending"]
    assert await outbox(client) == []


async def test_a_firing_alert_whose_rule_is_removed_resolves(client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals, for_=0)
    signals.value = 60.0
    await ev.step(1000.0)
    assert len(await outbox(client)) == 2
    ev.ruleset = RuleSet([], ev.ruleset.webhooks)  # the rule is gone from the file
    await ev.step(1005.0)
    notes = await outbox(client)
    assert [n["alert"]["status"] for n in notes] == ["firing"] * 2 + ["resolved"] * 2
    assert notes[3]["alert"]["labels"]["alertname"] == "High"
    assert await client.hlen(ACTIVE) == 0
