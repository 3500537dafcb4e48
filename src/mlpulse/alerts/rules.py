"""Alert rules: the model, the shipped defaults, and one-line errors for a bad rules file."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from mlpulse.errors import ConfigError

Metric = Literal["mae", "rmse", "p95", "estimated_mae", "psi", "prediction_psi",
                 "unmatched_rate", "rejected_rate", "events_per_s", "label_delay_p95"]
Op = Literal[">", ">=", "<", "<="]
Severity = Literal["info", "warning", "critical"]
Receiver = Literal["dashboard", "webhook"]

DEFAULTS = "default_rules.yaml"
MIN_WINDOW, MAX_WINDOW = 10, 86400
# A bound on `for` so the evaluator's times stay ordinary floats; a week is longer than
# any condition worth waiting for.
MAX_FOR = 7 * 86400
# These are computed from drift buckets, which are kept only for the longest drift window
# and at least an hour (Settings.drift_keep): the loader is told that as `max_window`.
# rejected_rate divides by predictions from those buckets too; unmatched_rate and
# label_delay_p95 come from per-minute counts kept for a day.
DRIFT_METRICS = frozenset({"psi", "prediction_psi", "estimated_mae", "mae", "rmse", "p95",
                           "events_per_s", "rejected_rate"})
# What `relative_to: reference` multiplies: a field of the version's profile. The estimate
# is compared with the estimator's own mean on held-out training rows, so its bias cancels.
# rmse is refused: a profile holds no reference RMSE, and RMSE >= MAE always, so RMSE
# against a multiple of the reference MAE would fire on a healthy model with heavy tails.
REFERENCE_OF: dict[str, str] = {"mae": "reference_mae",
                                "estimated_mae": "reference_estimated_mae"}
# A rules file is a few kilobytes; one past this is a mistake, not worth parsing.
MAX_FILE_BYTES = 1024 * 1024
NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # it becomes Alertmanager's `alertname`
# The names tokens are issued for (gateway.auth.USER_NAME; a role is never imported here).
USER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TEXT = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,128}")
_KEY = re.compile(r"[\w-]{1,64}")
_CHOICES: dict[str, tuple[str, ...]] = {"metric": get_args(Metric), "op": get_args(Op),
                                        "severity": get_args(Severity),
                                        "relative_to": ("reference",)}


def _no_bool(value: Any) -> Any:
    # YAML reads yes/no/on/off as booleans, which pydantic would take for 1 and 0.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {value}")
    return value


# Numbers stay lax about numeric text because YAML 1.1 reads `1e-3` (no dot) as a string.
Seconds = Annotated[int, BeforeValidator(_no_bool)]
Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]


def _dashboard_only() -> list[Receiver]:
    return ["dashboard"]


def _got(value: Any) -> str:
    if isinstance(value, str | int | float) and len(repr(value)) <= 60:
        return f" (got {value!r})"
    return ""


class Rule(BaseModel):
    """One rule: fire when `metric` over `window` s compares `op` `threshold` for `for` s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Field order matters: a validator sees only the fields above it (metric, threshold).
    name: str
    metric: Metric
    feature: str | None = Field(None, validate_default=True)
    window: Seconds = Field(300, validate_default=True)
    op: Op
    threshold: Number
    for_: Seconds = Field(0, alias="for", ge=0, le=MAX_FOR)
    severity: Severity = "warning"
    model_version: str = "*"
    relative_to: Literal["reference"] | None = None
    users: list[str] | None = None
    notify: list[Receiver] = Field(default_factory=_dashboard_only)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError("must be 1 to 100 letters, digits, _, - or .")
        return value

    @field_validator("metric", "op", "severity", "relative_to", mode="before")
    @classmethod
    def _choice(cls, value: Any, info: ValidationInfo) -> Any:
        choices = _CHOICES[info.field_name or ""]
        if value in choices or (value is None and info.field_name == "relative_to"):
            return value
        # YAML reads a bare `op: >` as an empty folded block.
        hint = ' (quote it in YAML: op: ">")' if info.field_name == "op" and value == "" else ""
        raise ValueError(f"must be one of {', '.join(choices)}{hint or _got(value)}")

    @field_validator("feature")
    @classmethod
    def _feature(cls, value: str | None, info: ValidationInfo) -> str | None:
        metric = info.data.get("metric")
        if metric is None:  # the metric is wrong, and that is the error to report
            return value
        if metric != "psi":
            if value is not None:
                raise ValueError(f"only psi has a feature, not {metric}")
            return None
        if value is None:
            return "*"
        if not _TEXT.fullmatch(value):
            raise ValueError("must be a feature name (1 to 128 characters) or *")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: int, info: ValidationInfo) -> int:
        metric = info.data.get("metric")
        most = MAX_WINDOW
        if metric in DRIFT_METRICS:
            context = info.context if isinstance(info.context, dict) else {}
            most = min(most, int(context.get("max_window", 3600)))
        if not MIN_WINDOW <= value <= most:
            kept = f" ({metric} is kept for {most} s)" if most < MAX_WINDOW else ""
            raise ValueError(f"must be {MIN_WINDOW} to {most} seconds{kept}{_got(value)}")
        return value

    @field_validator("model_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # events may carry integer versions
        if isinstance(value, str) and not _TEXT.fullmatch(value):
            raise ValueError("must be * or a version of 1 to 128 characters")
        return value

    @field_validator("relative_to")
    @classmethod
    def _relative(cls, value: str | None, info: ValidationInfo) -> str | None:
        metric = info.data.get("metric")
        if value is None or metric is None:
            return value
        if metric not in REFERENCE_OF:
            raise ValueError(f"{metric} has no reference value; only "
                             f"{' and '.join(REFERENCE_OF)} do")
        threshold = info.data.get("threshold")
        if threshold is not None and threshold <= 0:
            raise ValueError("the threshold is then a multiple of the reference and must "
                             "be above 0")
        return value

    @field_validator("users")
    @classmethod
    def _users(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one user (leave users out for everyone)")
        for user in value:
            if not USER_NAME.fullmatch(user):
                raise ValueError(f"not a user name (letters, digits, _ and -){_got(user)}")
        return list(dict.fromkeys(value))

    @field_validator("notify", mode="before")
    @classmethod
    def _notify(cls, value: Any) -> Any:
        choices = get_args(Receiver)
        if isinstance(value, list):
            if not value:
                raise ValueError(f"must name at least one of {', '.join(choices)}")
            for item in value:
                if item not in choices:
                    raise ValueError(f"must list only {', '.join(choices)}{_got(item)}")
            return list(dict.fromkeys(value))
        return value

    def to_doc(self) -> dict[str, Any]:
        """The rule as YAML or JSON holds it, defaults filled in; `parse_rule` reads it back."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Webhook(BaseModel):
    """A receiver of Alertmanager's JSON, signed with HMAC-SHA256 when it has a secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    secret_env: str | None = None

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.fullmatch(value):
            raise ValueError(f"must be an environment variable's name{_got(value)}")
        return value

    def secret(self) -> str | None:
        """The signing secret: the variable `secret_env` names (None when unset or empty)."""
        if self.secret_env is None:
            return None
        # Read from the environment, not from Settings: each receiver names its own
        # variable, so the secret stays out of the rules file and out of the API.
        return os.environ.get(self.secret_env) or None


class _Receivers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: list[Webhook] = Field(default_factory=list)


@dataclass(frozen=True)
class RuleSet:
    """The rules of one file, and the webhooks that `notify: [webhook]` sends to."""

    rules: list[Rule]
    webhooks: list[Webhook]


def parse_rule(doc: dict[str, Any], max_window: int = 3600) -> Rule:
    """One rule from its mapping; a bad one raises pydantic's ValidationError."""
    return Rule.model_validate(doc, context={"max_window": max_window})


def load_rules(path: Path | None, max_window: int = 3600) -> RuleSet:
    """The rules in the YAML file at `path`, or the shipped defaults when it is None."""
    if path is None:
        return parse_rules(_yaml(resources.files("mlpulse.alerts").joinpath(DEFAULTS)
                                 .read_bytes(), DEFAULTS), DEFAULTS, max_window)
    return parse_rules(_yaml(_read(path), str(path)), str(path), max_window)


def parse_rules(doc: Any, where: str, max_window: int = 3600) -> RuleSet:
    """The rule set in a parsed rules document; a bad one raises ConfigError (one line)."""
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(_rule_items(doc, where)):
        name = item.get("name") if isinstance(item, dict) else None
        at = f"{where}: rules[{i}]"
        if isinstance(name, str) and NAME.fullmatch(name):
            at = f'{where}: rule "{name}" (rules[{i}])'
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: must be a mapping of a rule's keys{_got(item)}")
        try:
            rule = parse_rule(item, max_window)
        except ValidationError as exc:
            raise ConfigError(describe(exc, at)) from exc
        if rule.name in seen:
            raise ConfigError(f"{at}: name: rules[{seen[rule.name]}] has that name already; "
                              "names must be unique")
        seen[rule.name] = i
        rules.append(rule)
    receivers = doc.get("receivers")
    try:
        webhooks = _Receivers.model_validate({} if receivers is None else receivers).webhook
    except ValidationError as exc:
        raise ConfigError(describe(exc, f"{where}: receivers")) from exc
    return RuleSet(rules, webhooks)


def _rule_items(doc: Any, where: str) -> list[Any]:
    if doc is None:
        raise ConfigError(f"{where}: the file is empty; it needs a rules: list")
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of rules: and "
                          f"receivers:, not a {type(doc).__name__}")
    for key in doc:
        if key not in ("rules", "receivers"):
            shown = _field((key,)) if isinstance(key, str) else repr(key)
            raise ConfigError(f"{where}: {shown}: unknown key (the top level has rules "
                              "and receivers)")
    if "rules" not in doc:
        raise ConfigError(f"{where}: rules: is required (rules: [] for none)")
    items = doc["rules"]
    if not isinstance(items, list):
        raise ConfigError(f"{where}: rules: must be a list of rules, "
                          f"not a {type(items).__name__}")
    return items


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: over {MAX_FILE_BYTES} bytes, too big for a rules file")
    return data


def _yaml(data: bytes, where: str) -> Any:
    try:
        return yaml.safe_load(data)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # `op: >=` unquoted starts a folded block, and the scanner says only that.
        hint = ' (quote operators: op: ">=")' \
            if exc.context == "while scanning a block scalar" else ""
        problem = exc.problem or exc.context or "cannot be parsed"
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}{hint}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from exc


def describe(exc: ValidationError, where: str) -> str:
    """One line for people: where, the first field that is wrong, and what is wrong."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = _field(first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {field + ': ' if field else ''}{_message(first)}{more}"


def _message(error: ErrorDetails) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if msg[1:2].islower():  # "Input should be ..." but not "URL scheme ..."
        msg = msg[0].lower() + msg[1:]
    return msg + _got(error.get("input"))


def _field(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _KEY.fullmatch(part) else repr(part)
            text += f".{key}" if text else key
    return text
