"""Silences and acknowledgements in the evaluator, against a real Redis, signals scripted.

A silence holds back notifications only: states and history move as ever, a firing held
back is notified once the silence ends (with a key of its own), and a resolution is
notified only after a notified firing.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mlpulse.alerts.acks import acknowledge
from mlpulse.alerts.evaluator import ACTIVE, HISTORY, fingerprint, read_alerts
from mlpulse.alerts.signals import Series
from mlpulse.alerts.silences import (
    SILENCES,
    SilenceRequest,
    active_silences,
    add_silence,
    expire_silence,
)
from tests.alerts.test_states import Scripted, evaluator, outbox

FP = fingerprint("High", {"model_version": "v1"})


@pytest.fixture
def client(aredis: Any) -> Any:
    return aredis


async def silence(client: Any, matchers: dict[str, str], now: float,
                  duration: float = 30) -> str:
    made = await add_silence(client, SilenceRequest(matchers=matchers, duration=duration),
                             "root", now=now)
    return made.id


async def history(client: Any) -> list[dict[str, Any]]:
    """Oldest first."""
    return [orjson.loads(h) for h in reversed(await client.lrange(HISTORY, 0, -1))]


async def test_a_firing_held_back_by_a_silence_is_notified_once_it_ends(client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals, for_=0)
    await silence(client, {"alertname": "High", "model_version": "v1"}, now=1000.0)  # to 1030
    signals.value = 60.0
    await ev.step(1000.0)
    await ev.step(1010.0)
    assert await outbox(client) == []
    (firing,) = (await read_alerts(client))["firing"]  # the state moved all the same
    assert firing["silenced"] is True
    assert firing["notified"] is False
    assert [(h["to"], h.get("silenced")) for h in await history(client)] == [
        ("pending", None), ("firing", True)]

    await ev.step(1040.0)  # the silence has ended; the alert still fires
    notes = await outbox(client)
    assert [(n["kind"], n["alert"]["status"]) for n in notes] == [
        ("dashboard", "firing"), ("webhook", "firing")]
    assert notes[1]["alert"]["starts_at"] == 1000.0  # when it fired, not when told
    await ev.step(1045.0)
    assert len(await outbox(client)) == 2  # once

    signals.value = 40.0
    await ev.step(1050.0)
    notes = await outbox(client)
    assert [n["alert"]["status"] for n in notes] == ["firing"] * 2 + ["resolved"] * 2
    keys = [n["key"] for n in notes if n["kind"] == "webhook"]
    assert len(set(keys)) == 2
    assert [(h["to"], h.get("silenced")) for h in await history(client)] == [
        ("pending", None), ("firing", True), ("resolved", None)]
    assert await client.hlen(SILENCES) == 0  # the ended silence was deleted


async def test_a_late_firing_gets_a_key_apart_from_the_prompt_one(client: Any) -> None:
    signals = Scripted()
    signals.value = 60.0
    prompt = evaluator(client, signals, for_=0)
    await prompt.step(1000.0)
    (prompt_hook,) = [n for n in await outbox(client) if n["kind"] == "webhook"]
    await client.flushdb()
    late = evaluator(client, signals, for_=0)
    await silence(client, {"alertname": "High"}, now=1000.0, duration=5)
    await late.step(1000.0)
    await late.step(1010.0)
    (late_hook,) = [n for n in await outbox(client) if n["kind"] == "webhook"]
    # The same fingerprint and episode (both began at 1000): the late notification's key
    # is not the one the firing held back would have had.
    assert late_hook["alert"]["episode"] == prompt_hook["alert"]["episode"]
    assert late_hook["key"] != prompt_hook["key"]


async def test_a_silence_that_does_not_match_changes_nothing(client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals, for_=0)
    await silence(client, {"alertname": "Other"}, now=1000.0)
    await silence(client, {"alertname": "High", "model_version": "v2"}, now=1000.0)
    await silence(client, {"severity": "critical"}, now=1000.0)  # High is a warning
    signals.value = 60.0
    await ev.step(1000.0)
    assert [n["alert"]["status"] for n in await outbox(client)] == ["firing"] * 2
    signals.value = 40.0
    await ev.step(1005.0)
    assert [n["alert"]["status"] for n in await outbox(client)] == ["firing"] * 2 + [
        "resolved"] * 2
    assert all("silenced" not in h for h in await history(client))


async def test_a_resolution_under_a_silence_is_not_notified(client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals, for_=0)
    signals.value = 60.0
    await ev.step(1000.0)
    assert len(await outbox(client)) == 2
    await silence(client, {"severity": "warning"}, now=1005.0)
    signals.value = 40.0
    await ev.step(1010.0)
    assert len(await outbox(client)) == 2  # receivers still think it fires: as silenced
    last = (await history(client))[-1]
    assert (last["to"], last.get("silenced")) == ("resolved", True)
    assert await client.hlen(ACTIVE) == 0


async def test_a_firing_never_notified_resolves_unnotified(client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals, for_=0)
    await silence(client, {"alertname": "High"}, now=1000.0)  # to 1030
    signals.value = 60.0
    await ev.step(1000.0)
    signals.value = 40.0  # it resolves in the round the silence has ended
    await ev.step(1040.0)
    assert await outbox(client) == []
    assert [(h["to"], h.get("silenced")) for h in await history(client)] == [
        ("pending", None), ("firing", True), ("resolved", True)]


async def test_silences_end_by_time_or_by_hand(client: Any) -> None:
    first = await silence(client, {"alertname": "High"}, now=1000.0, duration=10)
    second = await silence(client, {"alertname": "Low"}, now=1000.0, duration=60)
    assert [s.id for s in await active_silences(client, now=1005.0)] == [first, second]
    assert [s.id for s in await active_silences(client, now=1010.0)] == [second]
    assert await client.hkeys(SILENCES) == [second.encode()]  # the ended one is gone
    assert await expire_silence(client, second, now=1020.0)
    assert not await expire_silence(client, second, now=1020.0)
    assert await active_silences(client, now=1020.0) == []


def test_a_silence_needs_a_matcher_and_a_sane_duration() -> None:
    for bad in ({"matchers": {}, "duration": 60},
                {"matchers": {"alertname": "High"}, "duration": 0.5},
                {"matchers": {"alertname": "High"}, "duration": 31 * 86400},
                {"matchers": {"alertname": "High"}, "duration": True},
                {"matchers": {"9lives": "x"}, "duration": 60},
                {"matchers": {"alertname": ""}, "duration": 60}):
        with pytest.raises(ValueError, match=r"matchers|duration"):
            SilenceRequest.model_validate(bad)


# ---------------------------------------------------------------- acknowledgements


async def test_an_acknowledgement_lasts_the_episode_and_changes_no_notification(
        client: Any) -> None:
    signals = Scripted()
    ev = evaluator(client, signals, for_=0)
    signals.value = 60.0
    await ev.step(1000.0)
    state = await acknowledge(client, FP, "root", now=1002.0)
    assert state is not None
    assert (state["acked_by"], state["acked_at"]) == ("root", 1002.0)
    await ev.step(1005.0)
    (firing,) = (await read_alerts(client))["firing"]
    assert (firing["acked_by"], firing["acked_at"]) == ("root", 1002.0)
    assert firing["at"] == 1005.0  # the evaluator went on writing it
    signals.value = 40.0
    await ev.step(1010.0)
    assert [n["alert"]["status"] for n in await outbox(client)] == ["firing"] * 2 + [
        "resolved"] * 2
    assert await acknowledge(client, FP, "root") is None  # nothing active under it now
    signals.value = 60.0
    await ev.step(1020.0)
    (again,) = (await read_alerts(client))["firing"]
    assert "acked_by" not in again  # a new episode starts unacknowledged


async def test_an_acknowledgement_during_an_evaluation_is_kept(client: Any) -> None:
    class AckedMidRound(Scripted):
        """Acknowledges after the evaluator has read the states, before it writes."""

        ack = False

        async def series(self, rule: Any, now: float) -> list[Series]:
            if self.ack:
                assert await acknowledge(client, FP, "root", now=now) is not None
            return await super().series(rule, now)

    signals = AckedMidRound()
    ev = evaluator(client, signals, for_=0)
    signals.value = 60.0
    await ev.step(1000.0)
    signals.ack = True
    await ev.step(1005.0)
    signals.ack = False
    await ev.step(1010.0)
    (firing,) = (await read_alerts(client))["firing"]
    assert (firing["acked_by"], firing["at"]) == ("root", 1010.0)


async def test_an_unknown_fingerprint_is_not_acknowledged(client: Any) -> None:
    assert await acknowledge(client, "0123456789abcdef", "root") is None
    assert await acknowledge(client, "not-a-fingerprint", "root") is None
    assert await client.hlen(ACTIVE) == 0
