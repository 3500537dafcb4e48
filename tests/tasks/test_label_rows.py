"""Which label rows are taken: the wire's own rules for ids and numbers."""

from __future__ import annotations

from mlpulse.tasks.labels import _check


def test_label_rows_follow_the_wire_rules() -> None:
    good, bad = _check([
        {"id": 1, "y_true": 151.0},
        {"id": "a", "y_true": "75.5"},       # a CSV cell: text that is a number
        {"id": 1, "y_true": 151.0},          # the same id again: taken once
        {"id": "b", "y_true": True},         # a boolean is not a number
        {"id": "c", "y_true": "nan"},
        {"id": "d", "y_true": float("inf")},
        {"id": None, "y_true": 3.0},
        {"y_true": 3.0},
    ])
    assert good == [{"id": 1, "body": 151.0}, {"id": "a", "body": 75.5}]
    assert [line.split(":")[0] for line in bad] == ["row 4", "row 5", "row 6", "row 7", "row 8"]
    assert "boolean" in bad[0]
    assert "NaN or infinite" in bad[1]
