"""The FastAPI app: dashboard, JSON API, health and metrics (`/ws` is `sockets.Connection`)."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from mlpulse import __version__
from mlpulse.gateway import alert_routes, api, pages, task_routes
from mlpulse.gateway.deps import Gateway

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(gateway: Gateway) -> FastAPI:
    """Build the app around one gateway's state."""
    # FastAPI's own /docs and /redoc load their scripts from a CDN with an inline script;
    # pages.py serves /docs from this origin instead, under the CSP below.
    app = FastAPI(title="mlpulse gateway", version=__version__,
                  description="Live view of a deployed model's errors.",
                  docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    app.state.gateway = gateway
    app.mount("/static", StaticFiles(directory=str(pages.STATIC)), name="static")
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(alert_routes.router)
    app.include_router(task_routes.router)

    @app.exception_handler(redis.exceptions.RedisError)
    async def store_error(request: Request, exc: redis.exceptions.RedisError) -> Response:
        # One line in the log, and a sentence, not Redis's own words, for the client.
        log.error("redis refused %s %s: %s", request.method,
                  request.url.path, exc)
        down = isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)
        return JSONResponse({"detail": "the gateway's store (Redis) is unreachable; try again"
                             if down else "the gateway's store (Redis) answered with an error"},
                            status_code=503 if down else 500)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    return app
