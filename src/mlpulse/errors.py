"""The exception hierarchy: one root, one sentence each."""


class MlpulseError(Exception):
    """Root of every error mlpulse raises on purpose."""


class ConfigError(MlpulseError):
    """A setting has a value mlpulse cannot use."""


class ServiceUnavailable(MlpulseError):
    """RabbitMQ or Redis cannot be reached."""


class Backpressure(MlpulseError):
    """Work downstream is behind (the log is not being written); try the same work later."""
