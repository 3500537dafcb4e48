"""Rules made over the API: kept in Redis (`mlpulse:alerts:rules`, name -> the rule's JSON),
beside the file's, and read by the evaluator at each round."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import ValidationError

from mlpulse.alerts.rules import Rule, describe, parse_rule
from mlpulse.keys import PREFIX
from mlpulse.store import Redis

log = logging.getLogger(__name__)

RULES = PREFIX + "alerts:rules"

# HSET only over a rule that is there, so a PUT racing a DELETE cannot bring it back.
_REPLACE = """
if redis.call("HEXISTS", KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
return 1
"""


async def read_api_rules(redis: Redis) -> dict[str, bytes]:
    """Every API rule as stored: name -> JSON."""
    raw: Any = await redis.hgetall(RULES)
    return {k.decode(): bytes(v) for k, v in raw.items()}


def parse_stored(raw: bytes, max_window: int) -> Rule:
    """A stored rule; raises orjson's or pydantic's error if it is not one."""
    return parse_rule(orjson.loads(raw), max_window)


async def create_rule(redis: Redis, rule: Rule) -> bool:
    """Store a new rule; False when an API rule of that name exists."""
    return bool(await redis.hsetnx(RULES, rule.name, orjson.dumps(rule.to_doc())))


async def replace_rule(redis: Redis, rule: Rule) -> bool:
    """Replace the API rule of the same name; False when there is none."""
    script = redis.register_script(_REPLACE)
    done: Any = await script(keys=[RULES], args=[rule.name, orjson.dumps(rule.to_doc())])
    return bool(done)


async def delete_rule(redis: Redis, name: str) -> bool:
    """Delete an API rule; False when there is none."""
    return bool(await redis.hdel(RULES, name))


class ApiRules:
    """The evaluator's view of the API rules: read at every round, each stored version
    parsed once, and one that cannot be evaluated said once in the log."""

    def __init__(self, redis: Redis, max_window: int) -> None:
        self.redis = redis
        self.max_window = max_window
        self._parsed: dict[bytes, Rule | None] = {}

    async def with_file(self, file_rules: list[Rule]) -> tuple[list[Rule], set[str]]:
        """The file's rules and then the API's; and the names of API rules not evaluated,
        whose alerts are kept rather than dropped as a deleted rule's are."""
        rules = list(file_rules)
        taken = {r.name for r in rules}
        known, self._parsed = self._parsed, {}
        skipped = set()
        for name, raw in sorted((await read_api_rules(self.redis)).items()):
            rule = known[raw] if raw in known else self._parse(name, raw, taken)
            self._parsed[raw] = rule
            if rule is None or rule.name in taken:
                skipped.add(name)
            else:
                rules.append(rule)
                taken.add(rule.name)
        return rules, skipped

    def _parse(self, name: str, raw: bytes, taken: set[str]) -> Rule | None:
        try:
            rule = parse_stored(raw, self.max_window)
        except orjson.JSONDecodeError as exc:  # the API writes only valid rules
            log.error('API rule "%s" is not JSON and is not evaluated: %s', name, exc)
            return None
        except ValidationError as exc:
            log.error("API rule not evaluated: %s", describe(exc, f'rule "{name}"'))
            return None
        if rule.name in taken:  # the file gained a rule of that name after the API's
            log.error('API rule "%s" is not evaluated: the rules file has a rule of that name',
                      rule.name)
        return rule
