"""Sinks: where dead letters (and, later, actions) are delivered."""
