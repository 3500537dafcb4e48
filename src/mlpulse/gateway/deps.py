"""Request-scoped pieces the routes share: the gateway state and the signed-in user."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection

from mlpulse.config import Settings
from mlpulse.gateway.actualizer import Actualizer
from mlpulse.gateway.auth import AuthError, User, verify_token
from mlpulse.gateway.hub import Hub
from mlpulse.store import Redis

COOKIE = "token"


@dataclass
class Gateway:
    """What one gateway process holds, shared by every route."""

    settings: Settings
    secret: bytes
    hub: Hub
    redis: Redis
    actualizer: Actualizer
    broker_ok: Callable[[], bool]
    celery: Celery


def gateway_of(conn: HTTPConnection) -> Gateway:
    """The gateway state stored on the app."""
    state: Gateway = conn.app.state.gateway
    return state


def token_of(conn: HTTPConnection) -> str | None:
    """A token from the Authorization header, the `token` query parameter or the cookie."""
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return conn.query_params.get("token") or conn.cookies.get(COOKIE)


def user_of(conn: HTTPConnection) -> User:
    """The signed-in user, or `AuthError`."""
    return verify_token(gateway_of(conn).secret, token_of(conn))


def current_user(request: Request) -> User:
    """A route dependency: 401 unless the request carries a valid token."""
    try:
        return user_of(request)
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None


CurrentUser = Annotated[User, Depends(current_user)]
GatewayDep = Annotated[Gateway, Depends(gateway_of)]


async def read_bounded(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (or says it
    will), so a client cannot make the gateway hold more."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"{what} is at most {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise HTTPException(413, f"{what} is at most {limit} bytes")
    return bytes(raw)
