"""Task bodies: batch scoring in chunks, retraining, label collection and error reports.

Every task may run more than once (acks are late, and a task whose worker dies is
delivered again), so each one checks what an earlier run already did before doing it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
from celery import Task, group

from mlpulse import keys, task_queue
from mlpulse.errors import TRANSIENT_ERRORS
from mlpulse.ml import registry
from mlpulse.ml.data import diabetes, read_csv
from mlpulse.tasks import labels
from mlpulse.tasks.app import app, settings
from mlpulse.tasks.records import client, progress, update

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_models: dict[str, registry.LoadedModel] = {}


class Tracked(Task):  # type: ignore[misc]
    """A task with a record: its state changes reach the record and its owner."""

    finishes = True  # False when other tasks finish the job (batch scoring)

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        update(task_id, state="STARTED", started=time.time())

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if self.finishes:
            update(task_id, state="SUCCESS", finished=time.time(), result=retval)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        update(task_id, state="FAILURE", finished=time.time(), error=describe(exc))
        discard_files(task_id)

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                 einfo: Any) -> None:
        update(task_id, state="RETRY", error=describe(exc))


class JobPart(Task):  # type: ignore[misc]
    """A piece of a job whose record belongs to another task id (the first argument)."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        job = kwargs.get("job_id") or (args[0] if args else None)
        if job:
            update(job, state="FAILURE", finished=time.time(), error=describe(exc))
            discard_files(job)


def discard_files(job_id: str) -> None:
    """A failed job's upload and unmerged parts: nothing will read them again."""
    if _NAME.match(job_id):
        (settings.uploads_dir / f"{job_id}.csv").unlink(missing_ok=True)
        shutil.rmtree(_parts_dir(job_id), ignore_errors=True)


def describe(exc: BaseException) -> str:
    """One line for a person."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]


def _safe(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a plain file name: {name!r}")
    return name


def model(version: str) -> registry.LoadedModel:
    """One model version, loaded once per worker process."""
    if version not in _models:
        _models[version] = registry.load(settings.models_dir, int(version.lstrip("v")))
    return _models[version]


# ---------------------------------------------------------------- batch scoring

def _header(path: Path) -> list[str]:
    with path.open("rb") as f:
        return [h.strip() for h in f.readline().decode("utf-8-sig").strip().split(",")]


SCAN_BLOCK = 16 << 20  # bytes read at a time while looking for line ends


def _line_ends(path: Path) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Offsets of every b"\n", a block at a time: memory is 8 bytes a line, not a file copy."""
    found = []
    with path.open("rb") as f:
        offset = 0
        while block := f.read(SCAN_BLOCK):
            found.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + offset)
            offset += len(block)
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def chunk_bounds(path: Path, rows_per_chunk: int) -> list[tuple[int, int, int, int]]:
    """(start byte, end byte, first row number, rows) of each chunk; blank lines skipped."""
    size = path.stat().st_size
    if size == 0:
        return []
    ends = _line_ends(path)
    if not ends.size or ends[-1] != size - 1:
        ends = np.append(ends, size)  # the last line has no newline of its own
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    blank = lengths == 0
    one = np.flatnonzero(lengths == 1)
    if one.size:  # a line that is only "\r" is blank too
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            blank[one] = [mm[int(starts[i])] == 13 for i in one]
    blank[0] = True  # the header
    data_lines = np.flatnonzero(~blank)
    bounds = []
    for first in range(0, len(data_lines), rows_per_chunk):
        lines = data_lines[first:first + rows_per_chunk]
        end_byte = min(int(ends[lines[-1]]) + 1, size)
        bounds.append((int(starts[lines[0]]), end_byte, first + 1, len(lines)))
    return bounds


@app.task(bind=True, base=Tracked, name="mlpulse.batch_score", finishes=False,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=5)
def batch_score(self: Task, upload: str, rows: int, id_column: str | None = None) -> dict[str, Any]:
    """Split an uploaded CSV into chunks and score them on every worker."""
    job_id = self.request.id
    path = settings.uploads_dir / _safe(upload)
    current = registry.ensure_model(settings.models_dir)
    features = list(current.meta["feature_names"])
    header = _header(path)
    missing = [f for f in features if f not in header]
    if missing:
        raise ValueError(f"the upload lacks the model's features {missing}")
    bounds = chunk_bounds(path, settings.score_chunk_rows)
    total = sum(b[3] for b in bounds)
    if total != rows:
        log.warning("task %s: the gateway counted %d rows, the chunks hold %d", job_id, rows,
                    total)
    client().hset(task_queue.record_key(job_id), mapping={
        "chunks": len(bounds), "model_version": current.version})
    progress(job_id, _done_rows(job_id), total)
    if not bounds:
        merge_scores.delay(job_id, current.version, 0, 0, id_column)
    else:
        group(score_chunk.s(job_id, upload, current.version, start, end, first, index,
                            len(bounds), total, id_column)
              for index, (start, end, first, _) in enumerate(bounds)).apply_async()
    return {"chunks": len(bounds), "rows": total, "model_version": current.version}


def _parts_dir(job_id: str) -> Path:
    return settings.results_dir / f".{_safe(job_id)}.parts"


def _parts_key(job_id: str) -> str:
    return f"{task_queue.record_key(job_id)}:parts"


def _done_rows(job_id: str) -> int:
    return sum(int(v) for v in client().hvals(_parts_key(job_id)))


@app.task(bind=True, base=JobPart, name="mlpulse.score_chunk",
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=5)
def score_chunk(self: Task, job_id: str, upload: str, version: str, start: int, end: int,
                first_row: int, index: int, chunks: int, total: int,
                id_column: str | None) -> int:
    """Score one byte range of the upload into its own part file, once."""
    parts = _parts_dir(job_id)
    part = parts / f"part-{index:06d}.csv"
    if part.exists():
        with part.open("rb") as f:
            count = sum(1 for _ in f)
    else:
        path = settings.uploads_dir / _safe(upload)
        with path.open("rb") as f:
            f.seek(start)
            raw = f.read(end - start)
        loaded = model(version)
        features = list(loaded.meta["feature_names"])
        header = _header(path)
        dtypes: dict[str, Any] = {name: np.float64 for name in features}
        if id_column:
            dtypes[id_column] = str  # ids stay as written: "007" is not 7
        frame = pd.read_csv(io.BytesIO(raw), header=None, names=header, index_col=False,
                            dtype=dtypes)
        y = loaded.predict(frame[features].to_numpy(dtype=np.float64))
        out: dict[str, Any] = {"row": np.arange(first_row, first_row + len(frame))}
        if id_column:
            out["id"] = frame[id_column].to_numpy()
        out.update(y_pred=y, model_version=version)
        parts.mkdir(parents=True, exist_ok=True)
        tmp = parts / f".{part.name}.{uuid.uuid4().hex}.tmp"
        pd.DataFrame(out).to_csv(tmp, header=False, index=False)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, part)
        count = len(frame)
    key = _parts_key(job_id)
    pipe = client().pipeline()
    pipe.hsetnx(key, str(index), count)
    pipe.expire(key, task_queue.RECORD_TTL)
    pipe.hvals(key)
    _, _, counts = pipe.execute()
    done = sum(int(v) for v in counts)
    progress(job_id, done, total)
    if len(counts) == chunks:  # every part is on disk: one of the last ones starts the merge
        merge_scores.delay(job_id, version, chunks, total, id_column)
    return count


@app.task(bind=True, base=JobPart, name="mlpulse.merge_scores",
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=5)
def merge_scores(self: Task, job_id: str, version: str, chunks: int, total: int,
                 id_column: str | None) -> str:
    """Join the parts into the result file, once; later runs find it done."""
    final = settings.results_dir / f"{_safe(job_id)}.csv"
    parts = _parts_dir(job_id)
    if not final.exists():
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        tmp = settings.results_dir / f".{job_id}.{uuid.uuid4().hex}.tmp"
        columns = ["row", *(["id"] if id_column else []), "y_pred", "model_version"]
        try:
            with tmp.open("wb") as out:
                out.write((",".join(columns) + "\n").encode())
                for index in range(chunks):
                    with (parts / f"part-{index:06d}.csv").open("rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            if not final.exists():  # a concurrent merge that finished first removed the parts
                raise
    update(job_id, state="SUCCESS", finished=time.time(), done=total, total=total,
           result={"file": final.name, "rows": total, "model_version": version,
                   "media_type": "text/csv"})
    shutil.rmtree(parts, ignore_errors=True)
    (settings.uploads_dir / f"{job_id}.csv").unlink(missing_ok=True)
    return final.name


# ---------------------------------------------------------------- retraining

@app.task(bind=True, base=Tracked, name="mlpulse.retrain")
def retrain(self: Task, upload: str | None = None, target: str | None = None) -> dict[str, Any]:
    """Train and register a new version; the model role swaps it in by itself."""
    task_id = self.request.id
    done = registry.find(settings.models_dir, "task_id", task_id)
    if done is not None:  # a run before this one got as far as registering
        return _trained(done)
    current = registry.ensure_model(settings.models_dir)
    if upload is None:
        data, source = diabetes(), registry.DIABETES
    else:
        data = read_csv(settings.uploads_dir / _safe(upload), target)
        source = f"upload {upload}"
    if data.X.shape[1] != current.n_features:
        raise ValueError(f"the data has {data.X.shape[1]} features; the running model takes "
                         f"{current.n_features}")
    update(task_id, state="PROGRESS", done=0, total=1)
    estimator, mae = registry.train(data)
    new = registry.register(settings.models_dir, estimator, data, mae, source,
                            extra={"task_id": task_id})
    if upload is not None:  # a later run finds the version registered and needs no file
        (settings.uploads_dir / _safe(upload)).unlink(missing_ok=True)
    return _trained(new)


def _trained(model_: registry.LoadedModel) -> dict[str, Any]:
    return {"version": model_.version, "holdout_mae": model_.meta["holdout_mae"],
            "rows": model_.meta["rows"], "source": model_.meta["source"]}


# ---------------------------------------------------------------- label collection

@app.task(bind=True, base=Tracked, name="mlpulse.collect_labels",
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=1, retry_backoff_max=30,
          retry_jitter=False, max_retries=8)
def collect_labels(self: Task) -> dict[str, Any]:
    """Pull new labels from MLPULSE_LABELS_URL into y_true (Beat runs this)."""
    if not settings.labels_url:
        return {"skipped": "MLPULSE_LABELS_URL is not set"}
    lock = client().lock(keys.LABELS_LOCK, timeout=settings.task_hard_limit, blocking=False)
    if not lock.acquire():
        return {"skipped": "another collection is running"}
    try:
        return labels.pull(settings.labels_url, settings.labels_timeout)
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


# ---------------------------------------------------------------- reports

@app.task(bind=True, base=Tracked, name="mlpulse.report")
def report(self: Task, since: float | None = None, until: float | None = None,
           model_version: str | None = None) -> dict[str, Any]:
    """MAE, RMSE, quantiles and a histogram of the joined errors in a window."""
    from mlpulse.tasks.reports import write_report

    task_id = _safe(self.request.id)
    return write_report(settings.history_path, settings.results_dir, task_id, since, until,
                        model_version)
