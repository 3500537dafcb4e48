"""An error report over a time window of the metric log: figures and a histogram."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

QUANTILES = (0.5, 0.9, 0.95, 0.99)


def write_report(metric_log: Path, results_dir: Path, name: str, since: float | None,
                 until: float | None, model_version: str | None) -> dict[str, Any]:
    """Write `<name>.png` and `<name>.json` under `results_dir`; returns the summary."""
    errors = _errors(metric_log, since, until, model_version)
    summary: dict[str, Any] = {"count": int(errors.size)}
    if errors.size:
        summary.update(
            mae=float(errors.mean()),
            rmse=float(math.sqrt(float((errors ** 2).mean()))),
            max=float(errors.max()),
            **{f"p{round(q * 100)}": float(np.quantile(errors, q)) for q in QUANTILES},
        )
    window = {"since": since, "until": until, "model_version": model_version}
    results_dir.mkdir(parents=True, exist_ok=True)
    _plot(errors, results_dir / f"{name}.png", window)
    doc = {"summary": summary, "window": window}
    tmp = results_dir / f".{name}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, results_dir / f"{name}.json")
    return {"file": f"{name}.png", "media_type": "image/png", **doc}


def _errors(metric_log: Path, since: float | None, until: float | None,
            model_version: str | None) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not metric_log.exists():
        return np.empty(0)
    frame = pd.read_csv(metric_log, usecols=["absolute_error", "model_version", "logged_at"],
                        dtype={"absolute_error": np.float64, "model_version": str,
                               "logged_at": np.float64})
    keep = np.ones(len(frame), dtype=bool)
    if since is not None:
        keep &= frame["logged_at"].to_numpy() >= since
    if until is not None:
        keep &= frame["logged_at"].to_numpy() < until
    if model_version:
        keep &= (frame["model_version"] == model_version).to_numpy()
    return np.asarray(frame["absolute_error"].to_numpy()[keep], dtype=np.float64)


def _plot(errors: np.ndarray[Any, np.dtype[np.float64]], path: Path,
          window: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if errors.size:
            ax.hist(errors, bins=40, color="#3b82f6", edgecolor="white")
            ax.axvline(float(errors.mean()), color="#ef4444", linestyle="--",
                       label=f"MAE {errors.mean():.2f}")
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no errors in this window", ha="center", va="center",
                    transform=ax.transAxes)
        version = window["model_version"] or "all versions"
        ax.set_title(f"Absolute error, {errors.size:,} predictions, {version}")
        ax.set_xlabel("absolute error")
        ax.set_ylabel("predictions")
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
