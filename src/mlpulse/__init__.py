"""mlpulse: real-time monitoring of a deployed ML model."""

__version__ = "0.1.0"
