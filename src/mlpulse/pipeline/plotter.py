"""The plot role: redraws `error_distribution.png` from the live histogram in Redis."""

from __future__ import annotations

import asyncio
import csv
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mlpulse import health
from mlpulse.config import Settings
from mlpulse.errors import TRANSIENT_ERRORS
from mlpulse.keys import AGG, PLOT_DRAWN
from mlpulse.store import Redis, connect_redis, quantile_from_bins, read_histogram, read_summary
from mlpulse.waiting import every

log = logging.getLogger(__name__)
PROBLEM = "plot"


def render_histogram(path: Path, width: float, counts: list[int], stats: dict[str, Any]) -> None:
    """Draw the histogram and replace `path` atomically, so no reader sees half a file."""
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        edges = np.arange(len(counts)) * width
        overflow = counts[-1] if counts else 0
        last = max((i for i, c in enumerate(counts[:-1]) if c), default=0)
        shown = slice(0, last + 1)
        ax.bar(edges[shown], counts[shown], width=width, align="edge", color="#3b82f6",
               edgecolor="white", linewidth=0.5)
        ax.set_xlabel("absolute error |y_true - y_pred|")
        ax.set_ylabel("predictions")
        parts = [f"n = {stats.get('count', sum(counts)):,}"]
        for key, label in (("mae", "MAE"), ("rmse", "RMSE"), ("p50", "p50"), ("p95", "p95")):
            if stats.get(key) is not None:
                parts.append(f"{label} = {stats[key]:.2f}")
        if overflow:
            parts.append(f"{overflow:,} beyond {len(counts[:-1]) * width:g}")
        ax.set_title("Distribution of absolute errors\n" + "   ".join(parts), fontsize=11)
        if stats.get("mae") is not None:
            ax.axvline(stats["mae"], color="#ef4444", linestyle="--", linewidth=1.2, label="MAE")
            ax.legend(loc="upper right")
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        fig.text(0.99, 0.01, time.strftime("updated %Y-%m-%d %H:%M:%S"), ha="right",
                 fontsize=8, color="gray")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # the old picture stays whole; no half file is left
            raise
    finally:
        plt.close(fig)


def histogram_from_csv(csv_path: Path, bins: int = 40) -> tuple[float, list[int], dict[str, Any]]:
    """Bins and stats of the `absolute_error` column of a metric log."""
    with csv_path.open(newline="") as f:
        errors = np.array([float(r["absolute_error"]) for r in csv.DictReader(f)])
    if errors.size == 0:
        return 1.0, [0], {"count": 0}
    top = float(errors.max()) or 1.0
    width = top / bins
    counts, _ = np.histogram(errors, bins=bins, range=(0, top + 1e-12))
    stats = {
        "count": int(errors.size),
        "mae": float(errors.mean()),
        "rmse": float(math.sqrt(float((errors**2).mean()))),
        "p50": float(np.quantile(errors, 0.5)),
        "p95": float(np.quantile(errors, 0.95)),
    }
    return width, [*counts.tolist(), 0], stats


async def draw_if_new(settings: Settings, redis: Redis) -> bool:
    """Redraw when the joined count moved since the last drawing (or the file is gone)."""
    count = int(await redis.hget(AGG, "count") or 0)
    drawn = int(await redis.get(PLOT_DRAWN) or -1)
    if count == 0 or (count == drawn and settings.plot_path.exists()):
        log.debug("nothing new to draw (%d errors drawn)", drawn)
        return False
    width, counts = await read_histogram(redis)
    stats = await read_summary(redis)
    stats["p50"] = quantile_from_bins(width, counts, 0.5)
    stats["p95"] = quantile_from_bins(width, counts, 0.95)
    try:
        await asyncio.to_thread(render_histogram, settings.plot_path, width, counts, stats)
    except OSError as exc:
        problem = f"cannot write {settings.plot_path}: {exc.strerror or exc}"
        log.warning("%s; trying again in %gs", problem, settings.plot_interval)
        health.report_problem(PROBLEM, problem)
        return False
    if health.clear_problem(PROBLEM):
        log.info("drawing %s again", settings.plot_path)
    await redis.set(PLOT_DRAWN, count)
    log.info("drew %s (%d errors)", settings.plot_path, count)
    return True


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Check every `plot_interval` seconds; draw only when there is something new."""
    redis = await connect_redis(settings)
    log.info("ready: drawing %s every %gs", settings.plot_path, settings.plot_interval)
    try:
        await draw_when_new(settings, redis)
        await every(settings.plot_interval, stop, lambda: draw_if_new(settings, redis),
                    "drawing")
    finally:
        await redis.aclose()


async def draw_when_new(settings: Settings, redis: Redis) -> None:
    """One check at start; Redis being away only means trying again next time."""
    try:
        await draw_if_new(settings, redis)
    except TRANSIENT_ERRORS as exc:
        log.warning("redis unavailable, will retry: %r", exc)
