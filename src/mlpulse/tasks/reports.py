"""An error report over a time window of the history: figures and a histogram."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mlpulse.history import query


def write_report(history: Path, results_dir: Path, name: str, since: float | None,
                 until: float | None, model_version: str | None) -> dict[str, Any]:
    """Write `<name>.png` and `<name>.json` under `results_dir`; returns the summary.

    The errors come from the history, by joined time: a range of up to two hours from its
    rows (quantiles exact), a longer one from its per-minute rollups (quantiles within one
    bin), so the cost follows the range, not the size of the history."""
    found = query.summarize(history, since, until, model_version)
    summary: dict[str, Any] = {"count": found.count}
    if found.count:
        summary.update(mae=found.mae, rmse=found.rmse, max=found.max, **found.quantiles)
    summary["quantiles"] = "exact" if found.exact else "within one 4.4 % bin"
    if found.skipped:
        summary["skipped_files"] = len(found.skipped)
        summary["complete"] = False
    window = {"since": since, "until": until, "model_version": model_version}
    results_dir.mkdir(parents=True, exist_ok=True)
    _plot(found, results_dir / f"{name}.png", window)
    doc = {"summary": summary, "window": window}
    tmp = results_dir / f".{name}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, results_dir / f"{name}.json")
    return {"file": f"{name}.png", "media_type": "image/png", **doc}


def _plot(found: query.Summary, path: Path, window: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if found.errors is not None and found.errors.size:
            # Counted by numpy and drawn as steps: matplotlib's own hist copies the errors.
            counts, edges = np.histogram(found.errors, bins=40)
            ax.stairs(counts, edges, fill=True, color="#3b82f6")
        elif found.bins is not None:
            lows, highs, counts = found.bins
            ax.bar(lows, counts, width=highs - lows, align="edge", color="#3b82f6",
                   edgecolor="white")
            ax.set_xlim(0, float(highs[min(len(highs) - 1, _tail(counts))]))
        if found.count and found.mae is not None:
            ax.axvline(found.mae, color="#ef4444", linestyle="--",
                       label=f"MAE {found.mae:.2f}")
            ax.legend()
        if not found.count:
            ax.text(0.5, 0.5, "no errors in this window", ha="center", va="center",
                    transform=ax.transAxes)
        version = window["model_version"] or "all versions"
        ax.set_title(f"Absolute error, {found.count:,} predictions, {version}")
        ax.set_xlabel("absolute error")
        ax.set_ylabel("predictions")
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)


def _tail(counts: np.ndarray[Any, np.dtype[np.float64]]) -> int:
    """The bin holding the 99.9th percentile: the plot stops there, not at the largest."""
    return int(np.searchsorted(np.cumsum(counts), 0.999 * counts.sum()))
