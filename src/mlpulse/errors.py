"""The exception hierarchy: one root, one sentence each, and the one list of transient errors."""

from __future__ import annotations

import asyncio

import aio_pika.exceptions
import aiormq.exceptions
import httpx
import redis.exceptions


class MlpulseError(Exception):
    """Root of every error mlpulse raises on purpose."""


class ConfigError(MlpulseError):
    """A setting has a value mlpulse cannot use."""


class ServiceUnavailable(MlpulseError):
    """RabbitMQ or Redis cannot be reached."""


class BrokerLost(MlpulseError):
    """The connection to RabbitMQ went away; the caller reconnects."""


class SourceUnavailable(MlpulseError):
    """A third-party source answered with a server error or asked us to slow down."""


class Backpressure(MlpulseError):
    """Work downstream is behind (the log is not being written); try the same work later."""


# Errors after which the same work, tried again later, can succeed: the broker, Redis or
# a label source went away or is starting, or work downstream is behind.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    Backpressure,
    BrokerLost,
    SourceUnavailable,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
)
