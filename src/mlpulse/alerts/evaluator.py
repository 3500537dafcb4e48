"""The alert evaluator: rules in, states and notifications out, one active process at a time.

Every few seconds the process holding the lease (`mlpulse:alerts:lease`) reads each rule's
series (`signals.py`) and moves each label set through Prometheus's states: inactive ->
pending (the condition holds) -> firing (it has held for `for`) -> resolved. What changed
is written by one script that first checks the lease (`commit.lua`): the active alerts, a
bounded history of every transition, and an outbox of notifications. A second loop sends
the outbox: dashboard messages to `mlpulse.events`, webhooks as Celery tasks. A restart or
a takeover reads the same states, so nothing fires twice or is forgotten; a notification
sent but not yet taken off the outbox is sent again, with the same idempotency key.

The rules are the file's (or the shipped defaults), read once, and those made over the API
(`api_rules.py`), read at every round. A silence (`silences.py`) holds back notifications,
not states: an alert that fired under one is notified once the silence ends, if it is
still firing, and its resolution only if its firing was notified.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson

from mlpulse.alerts.api_rules import ApiRules
from mlpulse.alerts.rules import Rule, RuleSet, load_rules
from mlpulse.alerts.signals import Series, Signals
from mlpulse.alerts.silences import Silence, active_silences, silenced
from mlpulse.config import Settings
from mlpulse.keys import PREFIX
from mlpulse.store import Redis

log = logging.getLogger(__name__)

LEASE = PREFIX + "alerts:lease"
ACTIVE = PREFIX + "alerts:active"
HISTORY = PREFIX + "alerts:history"
OUTBOX = PREFIX + "alerts:outbox"
HISTORY_KEPT = 1000
# Take the lease if it is free, or extend it if it is ours, in one step.
RENEW = """
local holder = redis.call("GET", KEYS[1])
if holder == false then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
return 0
"""
OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


def fingerprint(rule: str, labels: dict[str, str]) -> str:
    """A stable id for one rule and label set, as Alertmanager gives one."""
    text = rule + "\0" + "\0".join(f"{k}={labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(slots=True)
class Change:
    """What one evaluation writes."""

    set: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    outbox: list[str] = field(default_factory=list)

    def doc(self) -> bytes:
        return orjson.dumps({"set": self.set or {}, "del": self.delete,
                             "history": self.history, "outbox": self.outbox})


def holds(value: float | None, rule: Rule, threshold: float) -> bool:
    return value is not None and math.isfinite(value) and OPS[rule.op](float(value), threshold)


def alert_labels(rule: Rule, labels: dict[str, str]) -> dict[str, str]:
    """An alert's labels as Alertmanager has them, and as silences match them."""
    return {"alertname": rule.name, "severity": rule.severity, **labels}


class Evaluator:
    """Evaluates the rules while it holds the lease; stands by otherwise."""

    def __init__(self, redis: Redis, settings: Settings, ruleset: RuleSet | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.ruleset = ruleset or load_rules(settings.alert_rules, settings.drift_keep)
        self.signals = Signals(redis, settings)
        self.me = uuid.uuid4().hex
        self.lease_ms = int(settings.alert_lease * 1000)
        self.active = False
        self._said: bool | None = None
        self.api_rules = ApiRules(redis, settings.drift_keep)
        self._lease = redis.register_script(RENEW)
        self._commit = redis.register_script(
            resources.files("mlpulse.alerts").joinpath("commit.lua").read_text())

    async def hold_lease(self) -> bool:
        """Take the lease if it is free, keep it if it is ours; say whether we hold it."""
        try:
            held = bool(await self._lease(keys=[LEASE], args=[self.me, self.lease_ms]))
        except BaseException:
            self.active = False  # unknown: the sender stops until the lease is ours again
            raise
        if held != self._said:
            log.info("%s", "evaluating the alert rules (lease taken)" if held
                     else "another evaluator holds the lease; standing by")
            self._said = held
        self.active = held
        return held

    async def step(self, now: float | None = None) -> Change | None:
        """One evaluation of every rule; None when another process holds the lease."""
        now = time.time() if now is None else now
        if not await self.hold_lease():
            return None
        raw: Any = await self.redis.hgetall(ACTIVE)
        stored = {k.decode(): orjson.loads(v) for k, v in raw.items()}
        rules, unreadable = await self.api_rules.with_file(self.ruleset.rules)
        silences = await active_silences(self.redis, now)
        change = Change()
        for rule in rules:
            try:
                series = await self.signals.series(rule, now)
            except Exception as exc:  # one rule that cannot be read must not stop the rest
                log.warning("rule %s not evaluated: %r", rule.name, exc)
                continue
            seen = set()
            for s in series:
                fp = fingerprint(rule.name, s.labels)
                seen.add(fp)
                self._advance(rule, s, fp, stored.get(fp), now, change, silences)
            # A label set that is gone (a version no longer scored) no longer holds.
            for fp, state in stored.items():
                if state["rule"] == rule.name and fp not in seen:
                    gone = Series(state["labels"], None, state["threshold"])
                    self._advance(rule, gone, fp, state, now, change, silences)
        names = {r.name for r in rules} | unreadable
        for fp, state in stored.items():  # a rule removed from the file or the API
            if state["rule"] not in names:
                self._retire(fp, state, now, change, silences)
        if change.set or change.delete or change.history:
            written = await self._commit(keys=[LEASE, ACTIVE, HISTORY, OUTBOX],
                                         args=[self.me, self.lease_ms, HISTORY_KEPT,
                                               change.doc()])
            if not written:
                self.active = False
                return None
        return change

    def _advance(self, rule: Rule, s: Series, fp: str, state: dict[str, Any] | None,
                 now: float, change: Change, silences: list[Silence]) -> None:
        condition = holds(s.value, rule, s.threshold)
        quiet = silenced(silences, alert_labels(rule, s.labels))
        if condition:
            if state is None:
                state = {"rule": rule.name, "labels": s.labels, "state": "pending",
                         "since": now, "severity": rule.severity, "episode": f"{now:.6f}",
                         "users": rule.users, "notify": rule.notify, "notified": False,
                         "notes": 0}
                self._transition(rule, fp, state, "inactive", "pending", s, now, change)
            state.update(value=s.value, threshold=s.threshold, at=now, silenced=quiet)
            if state["state"] == "pending" and now - state["since"] >= rule.for_:
                state["state"] = "firing"
                state["fired_at"] = now
                self._transition(rule, fp, state, "pending", "firing", s, now, change, quiet)
            elif state["state"] == "firing" and not state.get("notified", True) and not quiet:
                # The silence it fired under has ended: the notification it held back.
                self._notify(rule, fp, state, "firing", s, now, change)
            change.set[fp] = orjson.dumps(state).decode()
        elif state is not None:
            if state["state"] == "firing":
                state.update(value=s.value, resolved_at=now)
                # Receivers hear of a resolution only if they heard of the firing.
                held = quiet or not state.get("notified", True)
                self._transition(rule, fp, state, "firing", "resolved", s, now, change, held)
            else:
                self._transition(rule, fp, state, "pending", "inactive", s, now, change)
            change.delete.append(fp)

    def _retire(self, fp: str, state: dict[str, Any], now: float, change: Change,
                silences: list[Silence]) -> None:
        """Drop the alert of a rule that is gone; one that fired resolves, so receivers
        that heard of the firing hear of its end."""
        # The rule as the alert knew it: enough to name, route and notify.
        rule = Rule.model_construct(name=state["rule"], metric="mae", op=">",
                                    threshold=state.get("threshold", 0.0),
                                    severity=state["severity"], users=state.get("users"),
                                    notify=state.get("notify", ["dashboard"]))
        s = Series(state["labels"], None, state.get("threshold", 0.0))
        if state["state"] == "firing":
            state.update(value=None, resolved_at=now)
            held = silenced(silences, alert_labels(rule, s.labels)) \
                or not state.get("notified", True)
            self._transition(rule, fp, state, "firing", "resolved", s, now, change, held)
        change.delete.append(fp)

    def _transition(self, rule: Rule, fp: str, state: dict[str, Any], was: str, now_is: str,
                    s: Series, now: float, change: Change, held: bool = False) -> None:
        event = {"at": now, "rule": rule.name, "labels": s.labels, "from": was, "to": now_is,
                 "value": s.value, "threshold": s.threshold, "severity": rule.severity,
                 "fingerprint": fp, "episode": state["episode"], "users": rule.users}
        if held:
            event["silenced"] = True
        change.history.append(orjson.dumps(event).decode())
        if now_is in ("pending", "inactive"):
            return
        log.warning("alert %s %s %s: value %s, threshold %s%s", rule.name, now_is,
                    s.labels or "", s.value, s.threshold, " (silenced)" if held else "")
        if held:
            state["notes"] = state.get("notes", 0) + 1
            state["notified"] = False
        else:
            self._notify(rule, fp, state, now_is, s, now, change)

    def _notify(self, rule: Rule, fp: str, state: dict[str, Any], status: str, s: Series,
                now: float, change: Change) -> None:
        # Notifications of the episode, sent or held back, count in the webhook's key: a
        # firing told late, after a silence, has a key apart from the one held back.
        state["notes"] = state.get("notes", 0) + 1
        state["notified"] = True
        alert = {"rule": rule.name, "labels": alert_labels(rule, s.labels),
                 "status": status, "value": s.value, "threshold": s.threshold,
                 "starts_at": state.get("fired_at", now),
                 "ends_at": now if status == "resolved" else None,
                 "fingerprint": fp, "episode": state["episode"]}
        if "dashboard" in rule.notify:
            change.outbox.append(orjson.dumps(
                {"kind": "dashboard", "users": rule.users, "alert": alert}).decode())
        if "webhook" in rule.notify:
            for hook in self.ruleset.webhooks:
                key = hashlib.sha256(f"{fp}|{state['episode']}|{status}|{state['notes']}|"
                                     f"{hook.url}".encode()).hexdigest()
                change.outbox.append(orjson.dumps(
                    {"kind": "webhook", "key": key, "url": str(hook.url),
                     "secret_env": hook.secret_env, "alert": alert}).decode())


async def read_alerts(redis: Redis, user: str | None = None, limit: int = 100,
                      everyone: bool = False) -> dict[str, Any]:
    """What is pending or firing now (oldest first), and the latest transitions (newest
    first), of the rules `user` may see: those naming no users, or naming them; with
    `everyone`, all of them."""
    def visible(doc: dict[str, Any]) -> bool:
        users = doc.get("users")
        return everyone or not users or (user is not None and user in users)

    raw: Any = await redis.hgetall(ACTIVE)
    active = [a for a in ({**orjson.loads(v), "fingerprint": k.decode()}
                          for k, v in raw.items()) if visible(a)]
    active.sort(key=lambda a: a.get("since", 0))
    history = [h for h in (orjson.loads(x) for x in await redis.lrange(HISTORY, 0, -1))
               if visible(h)][:limit]
    return {"firing": [a for a in active if a["state"] == "firing"],
            "pending": [a for a in active if a["state"] == "pending"],
            "history": history}


async def run_evaluator(evaluator: Evaluator, stop: asyncio.Event) -> None:
    """Evaluate every `alert_interval` seconds until `stop`."""
    from mlpulse.waiting import every

    await every(evaluator.settings.alert_interval, stop, evaluator.step, "alerts")
