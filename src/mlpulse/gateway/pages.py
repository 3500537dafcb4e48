"""HTML pages: the dashboard, the login page, signing in and out, and the API docs."""

from __future__ import annotations

import html
import logging
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from mlpulse.gateway.auth import AuthError, verify_token
from mlpulse.gateway.deps import COOKIE, GatewayDep, user_of

log = logging.getLogger(__name__)

STATIC = resources.files("mlpulse.gateway") / "static"
# Swagger UI's assets come from an installed package, so /docs needs no CDN.
SWAGGER = resources.files("fastapi_swagger.resources")
SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                  "favicon-32x32.png": "image/png"}
router = APIRouter(include_in_schema=False)


# Browsers say where a navigation came from; a link on another site must not sign anyone
# in, or it could swap a signed-in person's session for the link owner's (login CSRF).
FOREIGN_SITES = frozenset({"cross-site", "same-site"})
FOREIGN_LINK = ("This sign-in link was opened from another site, so it was not used: "
                "signing you in from someone else's page could put your work in their "
                "account. Paste the token below, or open the link from the address bar.")
NOTICE = "<!-- notice -->"


def page(name: str, status: int = 200, notice: str | None = None) -> HTMLResponse:
    """One of the static HTML pages, with a sentence for the reader if there is one."""
    text = STATIC.joinpath(name).read_text()
    if notice is not None:
        text = text.replace(NOTICE, f'<p role="alert"><strong>{html.escape(notice)}'
                                    "</strong></p>")
    return HTMLResponse(text, status_code=status)


@router.get("/")
async def index(request: Request, gw: GatewayDep) -> Response:
    """The dashboard when signed in; the login page otherwise."""
    token = request.query_params.get("token")
    if token is not None:
        if request.headers.get("sec-fetch-site", "none").lower() in FOREIGN_SITES:
            log.warning("a sign-in link opened from another site was refused")
            return page("login.html", 403, FOREIGN_LINK)
        try:
            user = verify_token(gw.secret, token)
        except AuthError as exc:
            return page("login.html", 401, f"That token was refused: {exc}.")
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


@router.get("/favicon.ico")
async def favicon() -> Response:
    """The tab icon (public, like every static asset; browsers ask for it by this name)."""
    return Response(STATIC.joinpath("favicon.svg").read_bytes(), media_type="image/svg+xml",
                     headers={"Cache-Control": "public, max-age=86400"})


@router.get("/docs")
async def docs() -> Response:
    """The API's OpenAPI description in Swagger UI, served from this origin only."""
    return page("docs.html")


@router.get("/docs/{name}")
async def docs_asset(name: str) -> Response:
    """Swagger UI's script, stylesheet and icon."""
    media_type = SWAGGER_ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "no such file")
    return FileResponse(str(SWAGGER / name), media_type=media_type,
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/logout")
async def logout() -> Response:
    """Forget the cookie."""
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
