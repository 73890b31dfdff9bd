"""Scheduled automation rules: the spec, the schedule arithmetic, the audience and a run's steps.

Everything in this package is pure (no clock, no I/O); :mod:`smartico_stream.scheduler` runs it
against the store.
"""
