"""Reference profiles: bins with ties, the stored format, and versions from older releases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlpulse.drift import Column, Reference, Thresholds, column_profile, psi
from mlpulse.ml import profile, registry
from mlpulse.ml.data import diabetes


def test_a_two_valued_feature_gets_two_bins_and_deciles_otherwise() -> None:
    data = diabetes()
    sex = column_profile("sex", data.X[:, 1], 10)
    assert len(sex["edges"]) == 1
    assert sex["counts"] == [int(np.sum(data.X[:, 1] <= sex["edges"][0])),
                             int(np.sum(data.X[:, 1] > sex["edges"][0]))]
    assert sex["means"] == pytest.approx(sorted(set(data.X[:, 1].tolist())))
    bmi = column_profile("bmi", data.X[:, 2], 10)
    assert len(bmi["counts"]) == 10
    assert sum(bmi["counts"]) == 442
    assert min(bmi["counts"]) >= 40  # every decile holds about a tenth


def test_a_sample_of_the_reference_reads_no_drift_and_a_shift_does() -> None:
    x = diabetes().X[:, 2]
    col = Column.from_doc(column_profile("bmi", x, 10))
    rng = np.random.default_rng(0)
    same = col.histogram(x[rng.integers(0, len(x), 5000)])[0].astype(float)
    moved = col.histogram(x[rng.integers(0, len(x), 5000)] + x.std())[0].astype(float)
    t = Thresholds()
    assert t.status(psi(col.counts, same), 0.0, 5000) == "ok"
    assert t.status(psi(col.counts, moved), 0.0, 5000) == "drift"
    assert t.status(5.0, 5.0, 999) == "insufficient"


def test_a_new_version_is_registered_with_its_profile(tmp_path: Path) -> None:
    model = registry.ensure_model(tmp_path)
    assert model.meta["profile"] == "model-v1.profile.json"
    doc = json.loads((tmp_path / "model-v1.profile.json").read_text())
    assert doc["format"] == 1
    assert doc["rows"] == 442  # every training row, not a held-out split
    assert [f["name"] for f in doc["features"]] == model.meta["feature_names"]
    est = doc["error_estimator"]
    # Held out, the estimator beats answering a constant.
    assert est["heldout_mae"] < est["constant_mae"]
    assert 35 < doc["reference_mae"] < 55
    ref = Reference.from_doc(doc)
    assert len(ref.features) == 10


def test_an_older_version_gets_its_profile_built_from_the_diabetes_set(tmp_path: Path) -> None:
    model = registry.ensure_model(tmp_path)
    for p in (profile.profile_path(tmp_path, 1), profile.estimator_path(tmp_path, 1)):
        p.unlink()
    built = registry.ensure_profile(tmp_path, model)
    assert profile.profile_path(tmp_path, 1).exists()
    assert built.reference.reference_mae is not None


def test_an_older_version_trained_elsewhere_says_drift_is_unavailable(tmp_path: Path) -> None:
    model = registry.ensure_model(tmp_path)
    profile.profile_path(tmp_path, 1).unlink()
    model.meta["source"] = "upload gone.csv"
    with pytest.raises(profile.ProfileError, match="has no reference profile"):
        registry.ensure_profile(tmp_path, model)


@pytest.mark.parametrize("damage", ['{"format": 2}', "not json", '{"format": 1}'])
def test_a_damaged_profile_is_refused_with_its_reason(tmp_path: Path, damage: str) -> None:
    model = registry.ensure_model(tmp_path)
    profile.profile_path(tmp_path, 1).write_text(damage)
    with pytest.raises(profile.ProfileError, match="unreadable"):
        registry.ensure_profile(tmp_path, model)
