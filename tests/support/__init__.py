"""Helpers that tests import directly (``from tests.support.crash import Workload``).

Fixtures are not defined here: they live in ``tests/fixtures/`` and reach every test through the
``pytest_plugins`` list of the root ``tests/conftest.py``.
"""
