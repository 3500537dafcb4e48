"""Each role exports only the series it owns: the pipeline's shared counts and MAE come from
the metric role alone, never as zeros from the gateway or the model role."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.conftest import Env, Role, free_port, produce, wait_until
from tests.gateway.conftest import Gateway, start_gateway, token  # noqa: F401

SHARED = re.compile(r"^mlpulse_(joined|mae|rmse|rejected|unmatched|duplicates|join_pending)"
                    r"[ {]", re.M)


def test_the_shared_series_come_from_the_metric_role_only(
        env: Env, spawn: Callable[..., Role],
        start_gateway: Callable[..., Gateway]) -> None:  # noqa: F811
    ports = {"model": free_port(), "metric": free_port()}
    for name, port in ports.items():
        spawn(name, extra={"MLPULSE_METRICS_PORT": str(port)})
    gateway = start_gateway()
    produce(env, "--count", "200", "--batch", "20", "--rate", "400")
    wait_until(lambda: env.row_count() >= 200, timeout=60, what="200 rows in the log")

    def scrape(port: int) -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    wait_until(lambda: "mlpulse_joined 200.0" in scrape(ports["metric"]), timeout=30,
               what="the metric role to export the joined count")
    assert re.search(r"^mlpulse_mae \d", scrape(ports["metric"]), re.M)
    assert not SHARED.findall(scrape(ports["model"]))
    own = httpx.get(f"{gateway.http}/metrics", timeout=10,
                    headers={"Authorization": f"Bearer {token('ops')}"})
    assert own.status_code == 200
    assert "mlpulse_gateway_connections" in own.text  # its own series are there
    assert not SHARED.findall(own.text), SHARED.findall(own.text)
