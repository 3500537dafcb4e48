"""HTML pages: the dashboard, the login page, signing in and out."""

from __future__ import annotations

import logging
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mlpulse.gateway.auth import AuthError, verify_token
from mlpulse.gateway.deps import COOKIE, GatewayDep, user_of

log = logging.getLogger(__name__)

STATIC = resources.files("mlpulse.gateway") / "static"
router = APIRouter(include_in_schema=False)


def page(name: str, status: int = 200) -> HTMLResponse:
    """One of the static HTML pages."""
    return HTMLResponse(STATIC.joinpath(name).read_text(), status_code=status)


@router.get("/")
async def index(request: Request, gw: GatewayDep) -> Response:
    """The dashboard when signed in; the login page otherwise."""
    token = request.query_params.get("token")
    if token is not None:
        try:
            user = verify_token(gw.secret, token)
        except AuthError:
            return page("login.html", 401)
        # The token moves into an HttpOnly cookie and out of the address bar.
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                            max_age=gw.settings.login_ttl, path="/")
        log.info("%s signed in", user.name)
        return response
    try:
        user_of(request)
    except AuthError:
        return page("login.html")
    return page("index.html")


@router.get("/logout")
async def logout() -> Response:
    """Forget the cookie."""
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
