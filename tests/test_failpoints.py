"""Failpoint specs as the crash tests' entry point reads them (``--failpoints``)."""

from __future__ import annotations

import pytest

from smartico_stream.failpoints import Failpoints


def test_a_spec_names_points_and_the_hit_that_kills() -> None:
    points = Failpoints.parse(" after_store_commit=3, before_store_commit ,")
    assert points.targets == {"after_store_commit": 3, "before_store_commit": 1}


def test_an_empty_spec_sets_nothing_and_hits_are_free() -> None:
    points = Failpoints.parse("")
    assert points.targets == {}
    for _ in range(3):
        points.hit("after_store_commit")  # no target: never kills


@pytest.mark.parametrize(("spec", "message"), [
    ("after_store_commit=x", "must be an integer"),
    ("after_store_commit=0", "COUNT >= 1"),
    ("=2", "expected NAME"),
])
def test_a_bad_spec_is_refused_naming_the_item(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        Failpoints.parse(spec)
    assert repr(spec.strip()) in str(raised.value)
