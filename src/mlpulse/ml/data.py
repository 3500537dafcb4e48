"""Training and streaming data: the diabetes set shipped with scikit-learn, or a CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_diabetes

from mlpulse.errors import MlpulseError


@dataclass(slots=True)
class Dataset:
    """Feature matrix, targets and column names."""

    X: NDArray[np.float64]
    y: NDArray[np.float64]
    feature_names: list[str]


def diabetes() -> Dataset:
    """scikit-learn's diabetes regression set: 442 rows, 10 features, no download."""
    bunch = load_diabetes()
    return Dataset(
        np.asarray(bunch.data, dtype=np.float64),
        np.asarray(bunch.target, dtype=np.float64),
        list(bunch.feature_names),
    )


def read_csv(path: Path, target: str | None) -> Dataset:
    """A CSV with a header of feature names and, if `target` is given, a target column."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise MlpulseError(f"{path}: the file is empty") from None
        if target is not None and target not in header:
            raise MlpulseError(f"{path}: no column named {target!r} (columns: {header})")
        t_idx = header.index(target) if target is not None else -1
        rows: list[list[float]] = []
        ys: list[float] = []
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise MlpulseError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
            try:
                values = [float(v) for v in row]
            except ValueError as exc:
                raise MlpulseError(f"{path}:{line_no}: {exc}") from None
            if t_idx >= 0:
                ys.append(values.pop(t_idx))
            rows.append(values)
    names = [h for i, h in enumerate(header) if i != t_idx]
    X = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(names))
    return Dataset(X, np.asarray(ys, dtype=np.float64), names)
