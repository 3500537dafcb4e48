"""Task routes: start background work by name, follow it, fetch what it made.

The gateway never runs task code: it writes a task record, submits the task by name
with `send_task`, and reads records back. Only a task's owner sees it; anyone else gets
404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis.exceptions
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError

from mlpulse import task_queue
from mlpulse.gateway import quota
from mlpulse.gateway.auth import User
from mlpulse.gateway.csv_checks import check_features_csv, check_training_csv
from mlpulse.gateway.deps import CurrentUser, Gateway, GatewayDep, read_bounded
from mlpulse.gateway.uploads import receive_form
from mlpulse.ml.meta import read_meta, versions

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/tasks", tags=["tasks"])
LIST_LIMIT = 50


class ReportRequest(BaseModel):
    """The window of a report: epoch seconds, or the last `minutes` minutes."""

    since: float | None = None
    until: float | None = None
    minutes: float | None = Field(None, gt=0)
    model_version: str | None = Field(None, pattern=r"^v\d+$")


async def _submit(gw: Gateway, user: User, kind: str, params: dict[str, Any],
                  kwargs: dict[str, Any], task_id: str | None = None,
                  total: int = 0) -> JSONResponse:
    task_id = task_id or uuid.uuid4().hex
    record = task_queue.new_record(task_id, kind, user.name, params, total)
    await quota.admit(gw.redis, gw.settings, user.name, record)
    try:
        await asyncio.to_thread(gw.celery.send_task, task_queue.KINDS[kind], kwargs=kwargs,
                                task_id=task_id)
    except Exception as exc:  # the broker refused or is down: say so, keep the record
        await gw.redis.hset(task_queue.record_key(task_id), mapping={
            "state": "FAILURE", "error": f"could not queue the task: {exc}"})
        raise HTTPException(503, f"could not queue the task: {exc}") from None
    log.info("task %s (%s) queued for %s", task_id, kind, user.name)
    return JSONResponse({"id": task_id, "state": "PENDING", "url": f"/api/tasks/{task_id}"},
                        status_code=202, headers={"Location": f"/api/tasks/{task_id}"})


def _features(gw: Gateway) -> list[str]:
    found = versions(gw.settings.models_dir)
    if not found:
        raise HTTPException(503, "no model is registered yet: start the model role "
                                 "(mlpulse model) or run a retrain task")
    names: list[str] = read_meta(gw.settings.models_dir, found[-1])["feature_names"]
    return names


def _upload_path(gw: Gateway) -> tuple[str, Path]:
    """A new task id, and where its upload goes (the worker finds it by the same name)."""
    task_id = uuid.uuid4().hex
    gw.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    return task_id, gw.settings.uploads_dir / f"{task_id}.csv"


def _admin(user: User) -> None:
    if not user.admin:
        raise HTTPException(403, "only an admin can start this task")


@contextlib.contextmanager
def _kept_only_if_submitted(dest: Path) -> Iterator[None]:
    """Whatever stops an upload short of its task (a refusal, an error, a cancelled
    request) deletes the file."""
    try:
        yield
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


@router.post("/batch-score", status_code=202)
async def batch_score(request: Request, gw: GatewayDep, user: CurrentUser) -> JSONResponse:
    """Score an uploaded CSV (multipart field `file`, a header row of feature names, and
    optionally an `id` column). The scored CSV is the task's result."""
    await quota.admit(gw.redis, gw.settings, user.name)  # before the body is read
    task_id, dest = _upload_path(gw)
    with _kept_only_if_submitted(dest):
        form = await receive_form(request, dest, gw.settings.max_upload_bytes)
        if form.file is None:
            raise HTTPException(422, "no part named 'file': send the CSV as multipart field "
                                     "'file'")
        checked = await asyncio.to_thread(check_features_csv, dest, _features(gw))
        params = {"filename": form.filename, "rows": checked.rows}
        return await _submit(gw, user, "batch-score", params,
                             {"upload": dest.name, "rows": checked.rows,
                              "id_column": checked.id_column},
                             task_id=task_id, total=checked.rows)


@router.post("/retrain", status_code=202)
async def retrain(request: Request, gw: GatewayDep, user: CurrentUser) -> JSONResponse:
    """Admin only. Train a new model version on the diabetes data or, with a multipart
    upload (`file` plus a `target` field naming the target column), on that CSV."""
    _admin(user)
    if not request.headers.get("content-type", "").startswith("multipart/"):
        return await _submit(gw, user, "retrain", {"data": "diabetes"}, {})
    await quota.admit(gw.redis, gw.settings, user.name)
    task_id, dest = _upload_path(gw)
    with _kept_only_if_submitted(dest):
        form = await receive_form(request, dest, gw.settings.max_upload_bytes)
        target = form.fields.get("target", "").strip()
        if form.file is None or not target:
            raise HTTPException(422, "send the CSV as field 'file' and the target column's "
                                     "name as field 'target'")
        await asyncio.to_thread(check_training_csv, dest, target)
        kwargs = {"upload": dest.name, "target": target}
        params = {"data": form.filename, "target": target}
        return await _submit(gw, user, "retrain", params, kwargs, task_id=task_id)


# A report's JSON body is a few numbers; it is read only after the token is checked.
REPORT_BODY_MAX = 4096


@router.post("/report", status_code=202, openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": ReportRequest.model_json_schema()}}}})
async def report(request: Request, gw: GatewayDep, user: CurrentUser) -> JSONResponse:
    """An error report (MAE, RMSE, quantiles, histogram) for a window and a model version."""
    raw = await read_bounded(request, REPORT_BODY_MAX, "a report request")
    try:
        req = ReportRequest.model_validate_json(raw) if raw.strip() else ReportRequest()
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False)) from None
    since, until = req.since, req.until
    if req.minutes is not None:
        since = time.time() - req.minutes * 60
    if since is not None and until is not None and since >= until:
        raise HTTPException(422, "since must be before until")
    kwargs = {"since": since, "until": until, "model_version": req.model_version}
    return await _submit(gw, user, "report", kwargs, kwargs)


@router.post("/collect-labels", status_code=202)
async def collect_labels(gw: GatewayDep, user: CurrentUser) -> JSONResponse:
    """Admin only. Pull labels from MLPULSE_LABELS_URL now, as Beat does on its schedule."""
    _admin(user)
    return await _submit(gw, user, "collect-labels", {}, {})


@router.post("/{kind}", status_code=202, include_in_schema=False)
async def unknown_kind(kind: str) -> None:
    """A kind nobody knows."""
    raise HTTPException(404, f"no task kind {kind!r}; kinds: {', '.join(task_queue.KINDS)}")


async def _mine(gw: Gateway, user: User, task_id: str) -> dict[str, Any]:
    if not task_queue.is_task_id(task_id):
        raise HTTPException(404, "no such task")
    try:
        raw = await gw.redis.hgetall(task_queue.record_key(task_id))
    except redis.exceptions.ResponseError:  # a key of another kind under the same name
        raw = {}
    if not raw:
        raise HTTPException(404, "no such task")
    record = task_queue.parse_record(raw)
    if record.get("owner") != user.name:
        raise HTTPException(404, "no such task")
    return _public(record)


def _public(record: dict[str, Any]) -> dict[str, Any]:
    done, total = record.get("done", 0), record.get("total", 0)
    doc = {k: v for k, v in record.items() if k not in ("done", "total", "chunks")}
    doc["progress"] = {"done": done, "total": total,
                       "fraction": (done / total) if total else (
                           1.0 if record.get("state") == "SUCCESS" else 0.0)}
    result = record.get("result")
    if record.get("state") == "SUCCESS" and isinstance(result, dict) and result.get("file"):
        doc["result_url"] = f"/api/tasks/{record['id']}/result"
    return doc


@router.get("")
async def list_tasks(gw: GatewayDep, user: CurrentUser) -> list[dict[str, Any]]:
    """My tasks, newest first."""
    ids = await gw.redis.zrevrange(task_queue.owner_key(user.name), 0, LIST_LIMIT - 1)
    pipe = gw.redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.hgetall(task_queue.record_key(task_id.decode() if isinstance(task_id, bytes)
                                        else str(task_id)))
    answers = await pipe.execute(raise_on_error=False)
    found = [task_queue.parse_record(raw) for raw in answers if isinstance(raw, dict) and raw]
    return [_public(r) for r in found if r.get("owner") == user.name]


@router.get("/{task_id}")
async def get_task(task_id: str, gw: GatewayDep, user: CurrentUser) -> dict[str, Any]:
    """One of my tasks: state (Celery's names), progress and, once done, a result link."""
    return await _mine(gw, user, task_id)


@router.get("/{task_id}/result", response_model=None)
async def get_result(task_id: str, gw: GatewayDep, user: CurrentUser) -> FileResponse:
    """What one of my finished tasks made: the scored CSV, or the report's histogram."""
    record = await _mine(gw, user, task_id)
    if record.get("state") != "SUCCESS" or "result_url" not in record:
        raise HTTPException(409, f"the task is {record.get('state')}, not finished with a file")
    name = Path(str(record["result"]["file"])).name
    path = gw.settings.results_dir / name
    if not path.is_file():
        raise HTTPException(410, "the result file is gone")
    media = str(record["result"].get("media_type") or "application/octet-stream")
    return FileResponse(path, media_type=media, filename=name)
