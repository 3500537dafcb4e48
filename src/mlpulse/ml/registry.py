"""Model versions on disk: `model-vN.joblib` plus `model-vN.json`, the JSON written last."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from numpy.typing import NDArray
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlpulse.ml import profile
from mlpulse.ml.data import Dataset, diabetes
from mlpulse.ml.meta import read_meta, versions

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadedModel:
    """A fitted estimator with the version that names its predictions."""

    version: str
    estimator: Any
    n_features: int
    meta: dict[str, Any]

    def predict(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Vectorised prediction for a whole batch of already validated, finite rows."""
        # Input was checked on the wire; skipping sklearn's re-checks matters for the
        # small batches of a low-rate stream, where they cost more than the maths.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return np.asarray(self.estimator.predict(X), dtype=np.float64)


@contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(models_dir: Path, number: int) -> LoadedModel:
    """Load one version."""
    meta = read_meta(models_dir, number)
    estimator = joblib.load(models_dir / f"model-v{number}.joblib")
    return LoadedModel(f"v{number}", estimator, int(meta["n_features"]), meta)


def train(data: Dataset, seed: int = 0) -> tuple[Any, float]:
    """Fit a scaled ridge regression and report its MAE on a 20% holdout."""
    X_tr, X_te, y_tr, y_te = train_test_split(data.X, data.y, test_size=0.2, random_state=seed)
    holdout = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X_tr, y_tr)
    mae = float(mean_absolute_error(y_te, holdout.predict(X_te)))
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(data.X, data.y), mae


def register(models_dir: Path, estimator: Any, data: Dataset, holdout_mae: float,
             source: str, extra: dict[str, Any] | None = None) -> LoadedModel:
    """Save a fitted estimator as the next version, atomically."""
    with _locked(models_dir):
        return _save_next(models_dir, estimator, data, holdout_mae, source, extra)


def find(models_dir: Path, key: str, value: Any) -> LoadedModel | None:
    """The newest version whose metadata has `key` == `value`, if any."""
    for number in reversed(versions(models_dir)):
        meta = read_meta(models_dir, number)
        if meta.get(key) == value:
            return load(models_dir, number)
    return None


def _save_next(models_dir: Path, estimator: Any, data: Dataset, holdout_mae: float,
               source: str, extra: dict[str, Any] | None = None) -> LoadedModel:
    number = (versions(models_dir) or [0])[-1] + 1
    meta = {
        "version": f"v{number}",
        "created": time.time(),
        "n_features": int(data.X.shape[1]),
        "feature_names": data.feature_names,
        "holdout_mae": holdout_mae,
        "rows": int(data.X.shape[0]),
        "source": source,
        **(extra or {}),
    }
    _atomic_dump(models_dir / f"model-v{number}.joblib", estimator)
    try:
        doc, errors = profile.build(estimator, data)
    except profile.ProfileError as exc:
        # A profile left by an earlier try at this number belongs to another model.
        profile.discard(models_dir, number)
        log.warning("model v%d has no reference profile, so no drift: %s", number, exc)
    else:
        profile.save(models_dir, number, doc, errors)
        meta["profile"] = profile.profile_path(models_dir, number).name
    tmp = models_dir / f".model-v{number}.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, models_dir / f"model-v{number}.json")
    log.info("registered model v%d (holdout MAE %.2f, %s)", number, holdout_mae, source)
    return LoadedModel(f"v{number}", estimator, int(data.X.shape[1]), meta)


def _atomic_dump(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    joblib.dump(obj, tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


DIABETES = "diabetes (scikit-learn)"


def ensure_profile(models_dir: Path, model: LoadedModel) -> profile.Profiled:
    """The version's profile; one from an older release is built now if its training
    data is known (the diabetes set), else `ProfileError` says drift is unavailable."""
    number = int(model.version[1:])
    try:
        return profile.load(models_dir, number, model.n_features)
    except profile.ProfileError as exc:
        if profile.profile_path(models_dir, number).exists() \
                or model.meta.get("source") != DIABETES:
            raise
        missing = exc
    with _locked(models_dir):
        if not profile.profile_path(models_dir, number).exists():
            log.info("%s; building it from the diabetes set it was trained on", missing)
            doc, errors = profile.build(model.estimator, diabetes())
            profile.save(models_dir, number, doc, errors)
    return profile.load(models_dir, number, model.n_features)


def ensure_model(models_dir: Path) -> LoadedModel:
    """The latest version, training the first one on the diabetes set if there is none."""
    with _locked(models_dir):
        found = versions(models_dir)
        if found:
            return load(models_dir, found[-1])
        data = diabetes()
        estimator, mae = train(data)
        return _save_next(models_dir, estimator, data, mae, DIABETES)
