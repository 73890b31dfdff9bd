"""Adapters: the protocol operator mappings implement, their registry and golden-file runner."""
