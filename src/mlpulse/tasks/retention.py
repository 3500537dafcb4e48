"""Retention: uploads, scored CSVs and reports older than MLPULSE_RETENTION_DAYS go.

Beat runs `mlpulse.sweep_files` on a schedule whether or not labels are collected. A job's
directory of chunk parts goes as one piece, and only once nothing in it is recent, so a
job still being scored never loses a part.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from mlpulse import task_queue
from mlpulse.tasks.app import app, settings

log = logging.getLogger(__name__)


def sweep(folders: Iterable[Path], max_age: float, now: float | None = None) -> int:
    """Delete every entry of `folders` last changed more than `max_age` seconds ago;
    returns how many went."""
    cutoff = (time.time() if now is None else now) - max_age
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if _newest(entry.path) < cutoff:
                        shutil.rmtree(entry.path)
                        removed += 1
                elif entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # its job, or another sweep, removed it first
                continue
    return removed


def _newest(path: str) -> float:
    """The latest change to a directory or anything in it."""
    newest = os.stat(path, follow_symlinks=False).st_mtime
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            newest = max(newest, os.stat(os.path.join(root, name),
                                         follow_symlinks=False).st_mtime)
    return newest


@app.task(name=task_queue.SWEEP_TASK)
def sweep_files() -> int:
    """Beat's retention run over the uploads and results directories."""
    removed = sweep([settings.uploads_dir, settings.results_dir],
                    settings.retention_days * 86400)
    if removed:
        log.info("retention: removed %d upload(s) and result(s) older than %g days",
                 removed, settings.retention_days)
    return removed
