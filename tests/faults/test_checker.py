"""The checker must see every kind of failure it is there to catch, or its passes mean nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.faults.checker import History, check, read_log

HEADER = ["id", "y_true", "y_pred", "absolute_error", "model_version",
          "sent_at", "joined_at", "logged_at", "pos"]


def _row(rid: str, y_true: float, y_pred: float, error: float | None = None) -> list[str]:
    err = abs(y_true - y_pred) if error is None else error
    return [rid, repr(y_true), repr(y_pred), repr(err), "v1", "1.0", "2.0", "3.0", "1-0:0"]


def _write(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)


def _history() -> History:
    # Ids with a comma and a quote make the log quote them.
    labels = {"ok-1": 151.0, "lost-2": 75.0, "dup-3": 141.0, "label,4": 206.0,
              'err"5': 135.0, "late-6": 97.0, "late-7": 138.0}
    return History(labels=labels, confirmed=set(labels) - {"late-6", "late-7"})


def test_a_planted_lost_duplicated_wrong_and_unexpected_row_are_each_seen(
        tmp_path: Path) -> None:
    log = tmp_path / "metric_log.csv"
    _write(log, [
        _row("ok-1", 151.0, 140.25),
        _row("dup-3", 141.0, 120.5),
        _row("label,4", 207.0, 180.0),                     # y_true is not what was sent
        _row('err"5', 135.0, 101.125, error=33.0),         # |y_true - y_pred| is 33.875
        _row("dup-3", 141.0, 120.5),
        _row("never-sent", 10.0, 12.0),
        _row("late-7", 138.0, 130.0),                      # unconfirmed, logged once: fine
    ])
    assert '"label,4"' in log.read_text()  # the quoting is really exercised

    verdict = check(_history(), read_log(log))

    assert verdict.ok == 1
    assert verdict.lost == ["lost-2"]
    assert verdict.duplicated == {"dup-3": 2}
    assert set(verdict.wrong) == {"label,4", 'err"5'}
    assert "y_true" in verdict.wrong["label,4"]
    assert "absolute_error" in verdict.wrong['err"5']
    assert verdict.unexpected == ["never-sent"]
    assert verdict.unconfirmed_logged == 1
    assert verdict.events == 5
    assert not verdict.clean
    assert "lost=1 duplicated=1 wrong=2 unexpected=1" in verdict.explain()


def test_an_unconfirmed_event_may_be_missing_but_never_twice(tmp_path: Path) -> None:
    log = tmp_path / "metric_log.csv"
    history = _history()
    good = [_row(rid, label, label - 3.5) for rid, label in history.labels.items()
            if rid in history.confirmed]
    _write(log, good)
    assert check(history, read_log(log)).clean

    _write(log, [*good, _row("late-6", 97.0, 90.0), _row("late-6", 97.0, 90.0)])
    verdict = check(history, read_log(log))
    assert verdict.duplicated == {"late-6": 2}
    assert not verdict.clean


def test_a_log_with_a_foreign_header_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "metric_log.csv"
    log.write_text("y_true,id,y_pred,absolute_error\n1.0,a,2.0,1.0\n")
    with pytest.raises(AssertionError, match="starts with"):
        read_log(log)
