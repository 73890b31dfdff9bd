"""smartico-stream: operator event streams into a per-user ordered automation rule engine."""

__version__ = "0.1.0"
