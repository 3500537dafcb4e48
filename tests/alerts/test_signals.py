"""What the rules compare, read from counts written here by hand."""

from __future__ import annotations

from typing import Any

from mlpulse.alerts.rules import parse_rule
from mlpulse.alerts.signals import Signals, quantile
from mlpulse.config import Settings
from tests.conftest import REDIS_DB

SETTINGS = Settings(redis_url=f"redis://localhost:6379/{REDIS_DB}")


def rule(metric: str, **more: Any) -> Any:
    return parse_rule({"name": "R", "metric": metric, "op": ">", "threshold": 1, **more})


def test_quantile_is_linear_inside_a_bin_and_stops_at_the_last_bound() -> None:
    assert quantile({0: 10.0}, [5.0, 10.0], 0.5) == 2.5
    assert quantile({1: 10.0}, [5.0, 10.0], 0.5) == 7.5
    assert quantile({2: 10.0}, [5.0, 10.0], 0.95) == 10.0
    assert quantile({}, [5.0], 0.5) is None


async def test_label_delay_counts_by_join_time_over_the_whole_pipeline(aredis: Any) -> None:
    now = 1_795_000_030.0
    minute = int(now // 60) * 60
    # 90 labels within 0.1 s, 10 between 60 and 120 s (bin 9: (60, 120]).
    await aredis.hset(f"mlpulse:rates:{minute}", mapping={"ld0": 90, "ld9": 10})
    (series,) = await Signals(aredis, SETTINGS).series(rule("label_delay_p95"), now)
    assert series.labels == {}
    assert series.value == 90.0  # halfway into (60, 120]


async def test_events_per_s_divides_by_the_seconds_covered_so_far(aredis: Any) -> None:
    start = 1_795_000_000
    await aredis.zadd("mlpulse:drift:versions", {"v1": start})
    await aredis.hset(f"mlpulse:drift:v1:10:{start}", mapping={"n": 100})
    signals = Signals(aredis, SETTINGS)
    (series,) = await signals.series(rule("events_per_s", window=10), start + 2.0)
    assert series.value == 50.0  # 100 events in the 2 s of the bucket so far
    (series,) = await signals.series(rule("estimated_mae", window=10), start + 2.0)
    assert series.value is None  # a version without a profile has no estimate
