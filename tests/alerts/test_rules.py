"""Alert rules: the shipped defaults load, and each mistake in a file gets one line naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mlpulse.alerts.rules import (
    RuleSet,
    Webhook,
    describe,
    load_rules,
    parse_rule,
)
from mlpulse.errors import ConfigError

DEFAULT_NAMES = ["FeatureDrift", "MaeAboveReference", "EstimatedMaeAboveReference",
                 "NoEvents", "RejectedRate", "UnmatchedRate"]


def _rule(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "Slow", "metric": "mae", "op": ">", "threshold": 3.0}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def _load(tmp_path: Path, doc: Any, **kwargs: Any) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_rules(path, **kwargs)


def _error(tmp_path: Path, doc: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, doc)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'rules.yaml'}: ")
    return message.removeprefix(f"{tmp_path}/")


def test_defaults_load() -> None:
    rules = load_rules(None)
    assert [r.name for r in rules.rules] == DEFAULT_NAMES
    assert rules.webhooks == []
    by_name = {r.name: r for r in rules.rules}
    assert by_name["FeatureDrift"].feature == "*"
    assert by_name["FeatureDrift"].threshold == 0.25
    assert by_name["MaeAboveReference"].relative_to == "reference"
    assert by_name["EstimatedMaeAboveReference"].relative_to == "reference"
    assert by_name["NoEvents"].severity == "critical"
    assert by_name["NoEvents"].op == "<="
    assert by_name["UnmatchedRate"].window == 3600
    assert all(r.notify == ["dashboard", "webhook"] for r in rules.rules)


@pytest.mark.parametrize("key", ["metric", "op", "threshold"])
def test_missing_required_key_names_rule_and_field(tmp_path: Path, key: str) -> None:
    message = _error(tmp_path, {"rules": [_rule(**{key: _DROP})]})
    assert message == f'rules.yaml: rule "Slow" (rules[0]): {key}: is required'


def test_missing_name_names_the_position(tmp_path: Path) -> None:
    message = _error(tmp_path, {"rules": [_rule(), _rule(name=_DROP)]})
    assert message == "rules.yaml: rules[1]: name: is required"


def test_bad_op_is_one_line_naming_rule_and_field(tmp_path: Path) -> None:
    message = _error(tmp_path, {"rules": [_rule(name="FeatureDrift", op="=>")]})
    assert message == ('rules.yaml: rule "FeatureDrift" (rules[0]): '
                       "op: must be one of >, >=, <, <= (got '=>')")


@pytest.mark.parametrize(("changes", "field", "says"), [
    ({"metric": "accuracy"}, "metric", "must be one of mae, rmse, p95"),
    ({"severity": "page"}, "severity", "must be one of info, warning, critical"),
    ({"metric": "unmatched_rate", "window": 5}, "window", "must be 10 to 86400 seconds"),
    ({"metric": "unmatched_rate", "window": 90000}, "window",
     "must be 10 to 86400 seconds"),
    ({"window": 7200}, "window", "(mae is kept for 3600 s)"),
    ({"window": 30.5}, "window", "fractional part"),
    ({"window": True}, "window", "must be a number, not True"),
    ({"metric": "psi", "window": 7200}, "window", "(psi is kept for 3600 s)"),
    ({"metric": "estimated_mae", "window": 7200}, "window", "kept for 3600 s"),
    ({"threshold": "high"}, "threshold", "valid number"),
    ({"threshold": float("inf")}, "threshold", "finite number"),
    ({"threshold": [1]}, "threshold", "valid number"),
    ({"for": -1}, "for", "greater than or equal to 0"),
    ({"colour": "red"}, "colour", "unknown key"),
    ({"for_": 10}, "for_", "unknown key"),
    ({"feature": "age"}, "feature", "only psi has a feature, not mae"),
    ({"metric": "psi", "relative_to": "reference"}, "relative_to",
     "psi has no reference value"),
    ({"metric": "rmse", "relative_to": "reference"}, "relative_to",
     "rmse has no reference value"),
    ({"relative_to": "baseline"}, "relative_to", "must be one of reference"),
    ({"relative_to": "reference", "threshold": 0}, "relative_to", "must be above 0"),
    ({"name": "Slow alert"}, "name", "letters, digits"),
    ({"name": "x" * 101}, "name", "1 to 100"),
    ({"users": [""]}, "users", "not a user name"),
    ({"users": []}, "users", "at least one user"),
    ({"users": "alice"}, "users", "valid list"),
    ({"notify": ["email"]}, "notify", "must list only dashboard, webhook (got 'email')"),
    ({"notify": []}, "notify", "at least one of dashboard, webhook"),
    ({"model_version": ""}, "model_version", "must be * or a version"),
])
def test_bad_field_is_named(tmp_path: Path, changes: dict[str, Any], field: str,
                            says: str) -> None:
    name = changes.get("name", "Slow")
    at = f'rule "{name}" (rules[0])' if name == "Slow" else "rules[0]"
    message = _error(tmp_path, {"rules": [_rule(**changes)]})
    assert message.startswith(f"rules.yaml: {at}: {field}: "), message
    assert says in message


def test_several_errors_report_the_first_and_count_the_rest(tmp_path: Path) -> None:
    message = _error(tmp_path, {"rules": [_rule(op="=", severity="page")]})
    assert message.startswith('rules.yaml: rule "Slow" (rules[0]): op: must be one of')
    assert message.endswith("(and 1 more)")


def test_unquoted_op_in_yaml_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: A\n    metric: mae\n    op: >\n    threshold: 1\n")
    with pytest.raises(ConfigError, match=r'rules\[0\]\): op: .*quote it in YAML: op: ">"'):
        load_rules(path)
    path.write_text("rules:\n  - name: A\n    metric: mae\n    op: >=\n    threshold: 1\n")
    with pytest.raises(ConfigError, match=r'not valid YAML at line 4, column 10: .*op: ">="'):
        load_rules(path)


def test_duplicate_names(tmp_path: Path) -> None:
    message = _error(tmp_path, {"rules": [_rule(name="A"), _rule(name="B"), _rule(name="A")]})
    assert message == ('rules.yaml: rule "A" (rules[2]): name: rules[0] has that name '
                       "already; names must be unique")


@pytest.mark.parametrize(("doc", "says"), [
    ({"rules": {"name": "A"}}, "rules.yaml: rules: must be a list of rules, not a dict"),
    (["rules"], "rules.yaml: the top level must be a mapping of rules: and receivers:, "
                "not a list"),
    ({"receivers": {}}, "rules.yaml: rules: is required (rules: [] for none)"),
    ({"rules": [], "rule": []}, "rules.yaml: rule: unknown key"),
    ({"rules": ["Slow"]}, "rules.yaml: rules[0]: must be a mapping of a rule's keys"),
    ({"rules": [], "receivers": {"email": []}}, "rules.yaml: receivers: email: unknown key"),
    ({"rules": [], "receivers": {"webhook": [{"url": "ftp://alerts.example/hook"}]}},
     "rules.yaml: receivers: webhook[0].url: URL scheme should be 'http' or 'https'"),
    ({"rules": [], "receivers": {"webhook": [{"url": "http://h/", "secret_env": "A-B"}]}},
     "rules.yaml: receivers: webhook[0].secret_env: must be an environment variable's"),
])
def test_bad_file_shape(tmp_path: Path, doc: Any, says: str) -> None:
    assert _error(tmp_path, doc).startswith(says)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"rules\.yaml: the file is empty"):
        load_rules(tmp_path / "rules.yaml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_rules(tmp_path / "absent.yaml")
    assert str(caught.value) == f"{tmp_path / 'absent.yaml'}: no such file"


def test_invalid_yaml_is_one_line_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: A\n    metric: [mae\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid YAML at line 4, column 1: ")
    assert "\n" not in message


def test_full_rule_round_trips(tmp_path: Path) -> None:
    full = {"name": "FeatureDrift", "metric": "psi", "feature": "age", "window": 600,
            "op": ">=", "threshold": 0.3, "for": 60, "severity": "critical",
            "model_version": "7", "users": ["alice", "bob"],
            "notify": ["dashboard", "webhook"]}
    rule = _load(tmp_path, {"rules": [full]}).rules[0]
    assert rule.to_doc() == full
    assert parse_rule(rule.to_doc()) == rule
    relative = _rule(relative_to="reference", threshold=1.5)
    assert parse_rule(parse_rule(relative).to_doc()).to_doc()["relative_to"] == "reference"


def test_defaults_are_filled_in() -> None:
    assert parse_rule(_rule()).to_doc() == {
        "name": "Slow", "metric": "mae", "window": 300, "op": ">", "threshold": 3.0,
        "for": 0, "severity": "warning", "model_version": "*", "notify": ["dashboard"]}
    psi = parse_rule({"name": "D", "metric": "psi", "op": ">", "threshold": 0.2})
    assert psi.feature == "*"
    assert parse_rule(_rule(model_version=3)).model_version == "3"
    assert parse_rule(_rule(threshold="1e-3")).threshold == 0.001  # YAML 1.1 reads it as text
    assert parse_rule(_rule(notify=["webhook", "webhook"])).notify == ["webhook"]


def test_max_window_is_the_loaders_to_set(tmp_path: Path) -> None:
    rule = _rule(metric="psi", window=7200)
    assert _load(tmp_path, {"rules": [rule]}, max_window=7200).rules[0].window == 7200
    with pytest.raises(ConfigError, match=r"window: must be 10 to 1800 seconds"):
        _load(tmp_path, {"rules": [rule | {"window": 3600}]}, max_window=1800)
    # Only metrics of the drift buckets are bound by it: the rates have counts of their own.
    assert parse_rule(_rule(metric="unmatched_rate", window=7200),
                      max_window=600).window == 7200


def test_receivers_and_secret_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"rules": [], "receivers": {"webhook": [
        {"url": "http://127.0.0.1:9093/hook", "secret_env": "MLPULSE_TEST_HOOK_SECRET"},
        {"url": "https://alerts.example/hook"}]}}
    first, second = _load(tmp_path, doc).webhooks
    assert str(first.url) == "http://127.0.0.1:9093/hook"
    monkeypatch.delenv("MLPULSE_TEST_HOOK_SECRET", raising=False)
    assert first.secret() is None
    monkeypatch.setenv("MLPULSE_TEST_HOOK_SECRET", "")
    assert first.secret() is None
    monkeypatch.setenv("MLPULSE_TEST_HOOK_SECRET", "s3cret")
    assert first.secret() == "s3cret"
    assert second.secret() is None
    assert Webhook.model_validate({"url": "http://h/"}).secret_env is None


def test_describe_serves_the_api_too() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_rule({"name": "A", "metric": "unmatched_rate", "op": ">", "threshold": 1,
                    "window": 1})
    assert describe(caught.value, 'rule "A"') == (
        'rule "A": window: must be 10 to 86400 seconds (got 1)')
