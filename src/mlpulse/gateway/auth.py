"""Tokens: HS256 JWTs with `sub`, `exp` and an optional `admin` claim."""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from mlpulse.config import Settings
from mlpulse.errors import MlpulseError

USER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class AuthError(MlpulseError):
    """A token is missing, malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class User:
    """Who a valid token speaks for."""

    name: str
    admin: bool = False
    expires: float | None = None  # the token's `exp`, in seconds since the epoch


def parse_duration(text: str) -> float:
    """`90`, `30m`, `12h`, `7d` → seconds."""
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise MlpulseError(f"bad duration {text!r}: use a number with s, m, h or d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def load_secret(settings: Settings) -> tuple[bytes, bool]:
    """The signing secret, and whether it was created just now (the first start)."""
    if settings.secret is not None:
        value = settings.secret.get_secret_value()
        if len(value) < 32:
            raise MlpulseError("MLPULSE_SECRET must be at least 32 characters")
        return value.encode(), False
    path: Path = settings.data_dir / "secret"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip(), False
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    return path.read_bytes().strip(), True


def issue_token(secret: bytes, user: str, admin: bool = False, ttl: float = 7 * 86400) -> str:
    """A signed token for `user`, valid for `ttl` seconds."""
    if not USER_NAME.match(user):
        raise MlpulseError(f"bad user name {user!r}: use 1-64 letters, digits, _ or -")
    claims: dict[str, object] = {"sub": user, "exp": int(time.time() + ttl)}
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: bytes, token: str | None) -> User:
    """The user a token names; `AuthError` for anything but a valid, unexpired HS256 token."""
    if not token:
        raise AuthError("no token")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"],
                            options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token ({exc.__class__.__name__})") from None
    name = claims.get("sub")
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise AuthError("invalid token (bad subject)")
    return User(name, claims.get("admin") is True, float(claims["exp"]))
