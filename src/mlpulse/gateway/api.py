"""JSON API, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlpulse.alerts.evaluator import read_alerts
from mlpulse.errors import TRANSIENT_ERRORS
from mlpulse.gateway.auth import AuthError
from mlpulse.gateway.deps import CurrentUser, Gateway, GatewayDep, user_of
from mlpulse.gateway.relay import read_history
from mlpulse.health import role_problems
from mlpulse.history import query
from mlpulse.history.drift_rollups import drift_series, drift_written_until
from mlpulse.store import read_histogram, read_recent, read_summary

router = APIRouter()


@router.get("/healthz", tags=["ops"])
async def healthz(gw: GatewayDep) -> Response:
    """Redis and RabbitMQ reachability, and what any role reports it cannot do (a full
    disk, say); 503 when either is down or a role reports a problem."""
    try:
        redis_ok = bool(await asyncio.wait_for(gw.redis.ping(), 2))
    except Exception:  # any failure means "not reachable"
        redis_ok = False
    rabbit_ok = gw.broker_ok()
    problems: dict[str, list[str]] = {}
    if redis_ok:
        with contextlib.suppress(*TRANSIENT_ERRORS):
            problems = await asyncio.wait_for(role_problems(gw.redis), 2)
    ok = redis_ok and rabbit_ok and not problems
    body = {"status": "ok" if ok else "degraded", "redis": redis_ok, "rabbitmq": rabbit_ok,
            "connections": len(gw.hub.clients), "problems": problems}
    return Response(orjson.dumps(body), status_code=200 if ok else 503,
                    media_type="application/json")


@router.get("/metrics", tags=["ops"])
async def metrics(request: Request, gw: GatewayDep) -> Response:
    """Prometheus metrics (public only with MLPULSE_METRICS_PUBLIC)."""
    if not gw.settings.metrics_public:
        try:
            user_of(request)
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from None
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/me", tags=["api"])
async def me(user: CurrentUser, gw: GatewayDep) -> dict[str, Any]:
    """Who the token belongs to."""
    return {"user": user.name, "admin": user.admin,
            "connections": gw.hub.connections_of(user.name)}


@router.get("/api/summary", tags=["api"])
async def summary(user: CurrentUser, gw: GatewayDep) -> dict[str, Any]:
    """Counts, MAE, RMSE, error quantiles, events/s, unmatched and rejected."""
    snapshot: dict[str, Any] | None = gw.actualizer.snapshot.get("summary")
    return snapshot or await read_summary(gw.redis)


@router.get("/api/histogram", tags=["api"])
async def histogram(user: CurrentUser, gw: GatewayDep) -> dict[str, Any]:
    """Absolute-error histogram: fixed-width bins, the last one is the overflow."""
    width, counts = await read_histogram(gw.redis)
    return {"bin_width": width, "counts": counts}


@router.get("/api/recent", tags=["api"])
async def recent(user: CurrentUser, gw: GatewayDep, limit: int = 20) -> list[dict[str, Any]]:
    """The latest joined predictions, newest first."""
    return await read_recent(gw.redis, max(1, min(limit, 50)))


@router.get("/api/messages", tags=["api"])
async def messages(user: CurrentUser, gw: GatewayDep) -> list[Any]:
    """My own recent messages, oldest first."""
    return [orjson.loads(m) for m in await read_history(gw.redis, user.name)]


@router.get("/api/drift", tags=["api"])
async def drift(user: CurrentUser, gw: GatewayDep, window: int = 300,
                model_version: str | None = None) -> dict[str, Any]:
    """Feature and prediction drift, data quality, estimated and realized MAE, and the
    error-level changes of one model version over the last `window` seconds (the current
    partial bucket included). The version defaults to the newest with events in the
    window."""
    view = gw.actualizer.drift
    if view is None:
        raise HTTPException(503, "drift is not served by this gateway")
    if not view.shortest <= window <= view.longest:
        raise HTTPException(422, f"window must be {view.shortest} to {view.longest} seconds")
    if model_version is not None and not view.registered(model_version):
        raise HTTPException(404, f"no model version {model_version!r} in the registry")
    return await view.window(model_version, window)


@router.get("/api/alerts", tags=["alerts"])
async def alerts(user: CurrentUser, gw: GatewayDep, limit: int = 100) -> dict[str, Any]:
    """Alerts firing and pending now, and the latest transitions, newest first: those of
    rules for everyone and of rules naming me (an admin sees all)."""
    return await read_alerts(gw.redis, user.name, max(1, min(limit, 1000)),
                             everyone=user.admin)


@router.get("/api/history", tags=["api"])
async def history(user: CurrentUser, gw: GatewayDep, since: float | None = None,
                  until: float | None = None, step: float | None = None,
                  model_version: str | None = None,
                  source: Literal["auto", "rows", "rollups"] = "auto",
                  per_version: bool = False) -> dict[str, Any]:
    """Count, MAE, RMSE, p95 and max per step of joined time over [since, until) (Unix
    seconds; the last hour by default), for one model version or all combined. Points
    only where there is data. Ranges up to 2 h come from the rows (quantiles exact),
    longer ones from per-minute rollups (`"quantiles": "bin"`: within one 4.4 % bin); the
    step is raised to keep at most 10,000 points. `versions` lists the versions seen, and
    `complete` is false when a history file could not be read, and `written_until` says
    how far the history reaches (the newest rows join it within
    MLPULSE_HISTORY_FLUSH_SECONDS). `per_version=true` adds `by_version`, a series per
    version from the same read. With a model version,
    `drift` gives per step (of scoring time, whole minutes) the events, the estimated MAE
    and the PSI of each feature and of the prediction against the version's reference,
    with the PSI thresholds in force and how far the drift counts reach (they are copied
    a few minutes after each minute ends)."""
    now = time.time()
    until = now if until is None else until
    since = until - 3600 if since is None else since
    root = gw.settings.history_path
    try:
        answer = await asyncio.to_thread(query.series, root, since, until, step,
                                         model_version, source, per_version)
    except query.RangeError as exc:
        raise HTTPException(422, str(exc)) from None
    answer["drift"] = await _drift_history(gw, answer, model_version)
    return answer


async def _drift_history(gw: Gateway, answer: dict[str, Any],
                         version: str | None) -> dict[str, Any] | None:
    """Drift per step for one version, from the per-minute counts in the history."""
    if version is None:
        return None
    view = gw.actualizer.drift
    if view is None:
        return {"unavailable": "drift is not served by this gateway"}
    ref = view.reference(version)
    if isinstance(ref, str):
        return {"unavailable": ref}
    step = max(60, -(-answer["step"] // 60) * 60)
    root = gw.settings.history_path
    points, scan = await asyncio.to_thread(
        drift_series, root, answer["since"], answer["until"], step, version, ref,
        view.store.thresholds)
    t = view.store.thresholds
    return {"step": step, "complete": not scan.skipped, "series": points,
            "written_until": drift_written_until(root),
            "thresholds": {"psi_warn": t.warn, "psi_drift": t.drift,
                           "min_events": t.min_events}}


@router.get("/plot.png", tags=["api"])
async def plot(user: CurrentUser, gw: GatewayDep) -> Response:
    """The error-distribution PNG drawn by the plot role."""
    path = gw.settings.plot_path
    if not path.exists():
        raise HTTPException(404, "no plot yet: the plot role draws once errors arrive")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})
