"""mlpulse: real-time monitoring of a deployed ML model."""

from importlib.metadata import version

__version__ = version("mlpulse")
