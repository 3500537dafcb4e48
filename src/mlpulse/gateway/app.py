"""The FastAPI app: dashboard, JSON API, WebSocket, health and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from mlpulse.gateway import api, pages, sockets, tasks
from mlpulse.gateway.deps import Gateway

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(gateway: Gateway) -> FastAPI:
    """Build the app around one gateway's state."""
    app = FastAPI(title="mlpulse gateway", version="0.1.0",
                  description="Live view of a deployed model's errors.")
    app.state.gateway = gateway
    app.mount("/static", StaticFiles(directory=str(pages.STATIC)), name="static")
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(tasks.router)
    app.include_router(sockets.router)

    app.add_middleware(sockets.KeepRawSend)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    return app
