"""Reference profiles: what a model version's training data and errors looked like.

A profile sits beside its version as `model-vN.profile.json` (format 1, documented in
docs/drift.md) and `model-vN.errors.joblib` (the error estimator). It holds, for every
input feature and for the predictions, quantile bin edges over every training row with
the counts per bin, and mean, std, min and max; and an estimator of the absolute error
from the features and the prediction, trained on cross-validated residuals, as NannyML's
direct loss estimation does.

This module needs scikit-learn; readers of a profile that only bin and compare (the
gateway) use `mlpulse.drift`, which needs numpy alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from numpy.typing import NDArray
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold, cross_val_predict

from mlpulse.drift import PROFILE_FORMAT, Reference, column_profile
from mlpulse.errors import MlpulseError
from mlpulse.ml.data import Dataset

log = logging.getLogger(__name__)

DEFAULT_BINS = 10
CV_FOLDS = 5
# Rows the error estimator is fitted on at most: bins use every row, the estimator a
# seeded sample of a very large training set.
ESTIMATOR_ROWS = 200_000


class ProfileError(MlpulseError):
    """A version's profile is missing, unreadable or does not fit the model."""


def profile_path(models_dir: Path, number: int) -> Path:
    """Where version `number`'s profile is kept."""
    return models_dir / f"model-v{number}.profile.json"


def estimator_path(models_dir: Path, number: int) -> Path:
    """Where version `number`'s error estimator is kept."""
    return models_dir / f"model-v{number}.errors.joblib"


def _error_estimator() -> HistGradientBoostingRegressor:
    # 40 trees at a rate of 0.12: as accurate held out as 100 at 0.05 on the diabetes data
    # (24.95 against 24.78, a constant scores 25.37), at 2.6 times less per prediction,
    # which the model role pays on every event.
    return HistGradientBoostingRegressor(max_iter=40, learning_rate=0.12, random_state=0)


def build(estimator: Any, data: Dataset, bins: int = DEFAULT_BINS,
          seed: int = 0) -> tuple[dict[str, Any], Any]:
    """The profile document and the fitted error estimator for `estimator` on `data`."""
    X, y = data.X, data.y
    n = len(X)
    if n < 2 * CV_FOLDS:
        raise ProfileError(f"{n} training rows are too few for a reference profile")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, ESTIMATOR_ROWS, replace=False)) if n > ESTIMATOR_ROWS \
        else np.arange(n)
    folds = KFold(CV_FOLDS, shuffle=True, random_state=seed)
    # Held-out predictions: each row's residual comes from a model that did not see it.
    y_cv = cross_val_predict(clone(estimator), X[rows], y[rows], cv=folds)
    residual = np.abs(y[rows] - y_cv)
    Z = np.column_stack([X[rows], y_cv])
    held = cross_val_predict(_error_estimator(), Z, residual, cv=folds)
    errors = _error_estimator().fit(Z, residual)
    with sklearn.config_context(assume_finite=True):
        y_fit = np.asarray(estimator.predict(X), dtype=np.float64)
    doc = {
        "format": PROFILE_FORMAT,
        "rows": n,
        "bins": bins,
        "features": [column_profile(name, X[:, j], bins)
                     for j, name in enumerate(data.feature_names)],
        "prediction": column_profile("prediction", y_fit, bins),
        "error_estimator": {
            "kind": "HistGradientBoostingRegressor on the features and the prediction",
            "trained_on": f"{CV_FOLDS}-fold cross-validated absolute residuals",
            "rows": len(rows),
            # The estimator's own accuracy on rows it did not see, and what always
            # answering the median residual would score: the estimate is worth more
            # than a constant when the first is below the second.
            "heldout_mae": float(np.mean(np.abs(held - residual))),
            "constant_mae": float(np.mean(np.abs(residual - np.median(residual)))),
        },
        # What the version's MAE is expected to be on data like its training data.
        "reference_mae": float(np.mean(residual)),
        "reference_estimated_mae": float(np.mean(held)),
    }
    return doc, errors


def discard(models_dir: Path, number: int) -> None:
    """Remove what a run that stopped before registering version `number` left."""
    for path in (profile_path(models_dir, number), estimator_path(models_dir, number)):
        path.unlink(missing_ok=True)


def save(models_dir: Path, number: int, doc: dict[str, Any], errors: Any) -> None:
    """Write the estimator, then the profile, each atomically: a profile names a whole pair."""
    text = json.dumps(doc, indent=1)
    for path in (estimator_path(models_dir, number), profile_path(models_dir, number)):
        tmp = path.with_name(f".{path.name}.tmp")
        if path.suffix == ".joblib":
            joblib.dump(errors, tmp)
        else:
            tmp.write_text(text)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


class Profiled:
    """A version's reference and its error estimator, ready for a stream of batches."""

    def __init__(self, reference: Reference, errors: Any) -> None:
        self.reference = reference
        self.errors = errors

    def estimate(self, X: NDArray[np.float64], y_pred: NDArray[np.float64]) -> NDArray[np.float64]:
        """The estimated absolute error of each prediction (never below zero)."""
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            est = self.errors.predict(np.column_stack([X, y_pred]))
        return np.maximum(np.asarray(est, dtype=np.float64), 0.0)


def load(models_dir: Path, number: int, n_features: int) -> Profiled:
    """Version `number`'s profile, or `ProfileError` saying why there is none."""
    path = profile_path(models_dir, number)
    try:
        reference = Reference.from_doc(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ProfileError(f"model v{number} has no reference profile ({path.name})") from None
    except Exception as exc:  # any damage: not JSON, not an object, wrong fields
        raise ProfileError(f"model v{number}: {path.name} is unreadable: {exc!r}") from None
    if len(reference.features) != n_features:
        raise ProfileError(f"model v{number}: the profile has {len(reference.features)} "
                           f"features, the model takes {n_features}")
    try:
        errors = joblib.load(estimator_path(models_dir, number))
    except Exception as exc:  # a missing or damaged pickle, whatever the reason
        raise ProfileError(f"model v{number}: its error estimator is unreadable: "
                           f"{exc!r}") from None
    return Profiled(reference, errors)
