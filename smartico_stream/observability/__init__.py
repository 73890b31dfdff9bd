"""Observability: metrics, health, logging."""
