"""Alert rules, silences and acknowledgements over the API.

Rules from the file (or the shipped defaults) are read-only here; rules made here live in
Redis and the evaluator reads them at each round. Everything that changes something is for
admins; anyone signed in may see the silences.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from mlpulse.alerts import api_rules
from mlpulse.alerts.acks import acknowledge
from mlpulse.alerts.rules import NAME, Rule, describe, load_rules, parse_rule
from mlpulse.alerts.silences import SilenceRequest, active_silences, add_silence, expire_silence
from mlpulse.errors import ConfigError
from mlpulse.gateway.auth import User
from mlpulse.gateway.deps import CurrentUser, Gateway, GatewayDep, read_bounded

router = APIRouter(prefix="/api/alerts", tags=["alerts"])

# A rule or a silence is a few hundred bytes; the body is read only after the token and
# the admin claim are checked.
BODY_MAX = 16 * 1024


def _body_schema(model: type[Rule] | type[SilenceRequest]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema(by_alias=True)}}}}


def _admin(user: User, what: str) -> None:
    if not user.admin:
        raise HTTPException(403, f"only an admin can {what}")


async def _json_body(request: Request, what: str) -> Any:
    raw = await read_bounded(request, BODY_MAX, what)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(422, f"{what}: the body is not valid JSON ({exc})") from None


async def _file_rules(gw: Gateway) -> tuple[list[Rule], str]:
    """The rules the evaluator reads from MLPULSE_ALERT_RULES (or the defaults), and
    which of the two they are."""
    path = gw.settings.alert_rules
    try:
        ruleset = await asyncio.to_thread(load_rules, path, gw.settings.drift_keep)
    except ConfigError as exc:
        raise HTTPException(500, f"the alert rules file cannot be used: {exc}") from None
    return ruleset.rules, "default" if path is None else "file"


async def _rule_of(request: Request, gw: Gateway, name: str | None = None) -> Rule:
    """The rule in the body, checked as the evaluator checks it; 422 with one line."""
    doc = await _json_body(request, "a rule")
    if not isinstance(doc, dict):
        raise HTTPException(422, "rule: the body must be a JSON object of a rule's keys")
    if name is not None:
        doc.setdefault("name", name)
    given = doc.get("name")
    where = f'rule "{given}"' if isinstance(given, str) and NAME.fullmatch(given) else "rule"
    if name is not None and given != name:
        raise HTTPException(422, f"{where}: name: must be {name!r} as in the path (delete "
                                 "the rule and create one to rename it)")
    try:
        return parse_rule(doc, max_window=gw.settings.drift_keep)
    except ValidationError as exc:
        raise HTTPException(422, describe(exc, where)) from None


def _origin(source: str) -> str:
    return "the rules file" if source == "file" else "mlpulse's shipped defaults"


def _read_only(name: str, source: str) -> HTTPException:
    where = _origin(source)
    return HTTPException(409, f'rule "{name}" comes from {where} and cannot be changed over '
                              "the API; edit the rules file (MLPULSE_ALERT_RULES) instead")


def _shown(rule: Rule, source: str) -> dict[str, Any]:
    return {**rule.to_doc(), "source": source}


@router.get("/rules")
async def list_rules(gw: GatewayDep, user: CurrentUser) -> list[dict[str, Any]]:
    """Admin only. Every rule: the file's or the shipped defaults (read-only), then those
    made over the API, each with its `source`."""
    _admin(user, "see the alert rules")
    file_rules, source = await _file_rules(gw)
    shown = [_shown(r, source) for r in file_rules]
    for _, raw in sorted((await api_rules.read_api_rules(gw.redis)).items()):
        try:
            shown.append(_shown(api_rules.parse_stored(raw, gw.settings.drift_keep), "api"))
        except (orjson.JSONDecodeError, ValidationError):
            continue  # the evaluator says so in its log; nothing here can mend it
    return shown


@router.post("/rules", status_code=201, openapi_extra=_body_schema(Rule))
async def create_rule(request: Request, gw: GatewayDep, user: CurrentUser) -> JSONResponse:
    """Admin only. Add a rule (one rule as in the rules file, as JSON); the evaluator
    picks it up at its next round."""
    _admin(user, "add alert rules")
    rule = await _rule_of(request, gw)
    file_rules, source = await _file_rules(gw)
    if any(r.name == rule.name for r in file_rules):
        raise HTTPException(409, f'rule "{rule.name}" exists already in {_origin(source)}; '
                                 "choose another name")
    if not await api_rules.create_rule(gw.redis, rule):
        raise HTTPException(409, f'rule "{rule.name}" exists already (made over the API); '
                                 "choose another name, or PUT to replace it")
    url = f"/api/alerts/rules/{rule.name}"
    return JSONResponse(_shown(rule, "api"), status_code=201, headers={"Location": url})


@router.put("/rules/{name}", openapi_extra=_body_schema(Rule))
async def replace_rule(name: str, request: Request, gw: GatewayDep,
                       user: CurrentUser) -> dict[str, Any]:
    """Admin only. Replace a rule made over the API; the file's are read-only (409)."""
    _admin(user, "change alert rules")
    file_rules, source = await _file_rules(gw)
    if any(r.name == name for r in file_rules):
        raise _read_only(name, source)
    rule = await _rule_of(request, gw, name)
    if not await api_rules.replace_rule(gw.redis, rule):
        raise HTTPException(404, f'no rule "{name}" was made over the API')
    return _shown(rule, "api")


@router.delete("/rules/{name}", status_code=204)
async def delete_rule(name: str, gw: GatewayDep, user: CurrentUser) -> Response:
    """Admin only. Delete a rule made over the API; its alerts go with it."""
    _admin(user, "delete alert rules")
    file_rules, source = await _file_rules(gw)
    if any(r.name == name for r in file_rules):
        raise _read_only(name, source)
    if not await api_rules.delete_rule(gw.redis, name):
        raise HTTPException(404, f'no rule "{name}" was made over the API')
    return Response(status_code=204)


@router.post("/silences", status_code=201, openapi_extra=_body_schema(SilenceRequest))
async def create_silence(request: Request, gw: GatewayDep, user: CurrentUser) -> JSONResponse:
    """Admin only. Hold back the notifications of alerts whose labels match all of
    `matchers` (`alertname` is the rule's name) for `duration` seconds from now."""
    _admin(user, "silence alerts")
    try:
        wanted = SilenceRequest.model_validate(await _json_body(request, "a silence"))
    except ValidationError as exc:
        raise HTTPException(422, describe(exc, "silence")) from None
    silence = await add_silence(gw.redis, wanted, user.name)
    return JSONResponse(silence.doc(), status_code=201,
                        headers={"Location": f"/api/alerts/silences/{silence.id}"})


@router.get("/silences")
async def list_silences(gw: GatewayDep, user: CurrentUser) -> list[dict[str, Any]]:
    """The silences in force, soonest to end first."""
    return [s.doc() for s in await active_silences(gw.redis)]


@router.delete("/silences/{silence_id}", status_code=204)
async def delete_silence(silence_id: str, gw: GatewayDep, user: CurrentUser) -> Response:
    """Admin only. End a silence now."""
    _admin(user, "end silences")
    if not await expire_silence(gw.redis, silence_id):
        raise HTTPException(404, "no such silence in force")
    return Response(status_code=204)


@router.post("/ack/{fingerprint}")
async def ack(fingerprint: str, gw: GatewayDep, user: CurrentUser) -> dict[str, Any]:
    """Admin only. Mark an active alert acknowledged by me until it resolves; its
    notifications go on as before."""
    _admin(user, "acknowledge alerts")
    state = await acknowledge(gw.redis, fingerprint, user.name)
    if state is None:
        raise HTTPException(404, f"no active alert has the fingerprint {fingerprint[:64]!r}")
    return {"fingerprint": fingerprint, **state}
