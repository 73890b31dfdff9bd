"""Rule files as one unit: both kinds loaded together, ids unique across kinds, and the rule-set
version (a digest of the files) that instances and `rules status` compare."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartico_stream.engine.rule_files import load_rule_files, rule_set_version
from smartico_stream.engine.rules import RuleLoadError

REAL_TIME = "  - id: rt\n    name: rt\n    trigger: {event: deposit}\n    actions: [{action: mark_user, tag: t}]\n"
SCHEDULED = "  - id: sc\n    name: sc\n    schedule: {type: now}\n    actions: [{action: mark_user, tag: s}]\n"


def test_both_kinds_and_a_version_that_follows_the_content(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "a.yaml").write_text("rules:\n" + REAL_TIME)
    (folder / "b.yml").write_text("rules:\n" + SCHEDULED)
    (folder / ".hidden.yaml").write_text("not: [valid")  # a ConfigMap's hidden copies are not read
    loaded = load_rule_files(folder)
    assert [r.id for r in loaded.real_time.rules] == ["rt"] and list(loaded.scheduled) == ["sc"]
    assert loaded.version == rule_set_version(folder) and len(loaded.version) == 12
    (folder / "b.yml").write_text("rules:\n" + SCHEDULED.replace("tag: s", "tag: s2"))
    changed = rule_set_version(folder)
    assert changed != loaded.version
    (folder / "b.yml").write_text("rules:\n" + SCHEDULED)
    assert rule_set_version(folder) == loaded.version  # an undone edit is the old version again
    (folder / "b.yml").rename(folder / "c.yml")
    assert rule_set_version(folder) != loaded.version  # file names count too


def test_an_id_used_by_both_kinds_and_problems_of_both_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n" + REAL_TIME + SCHEDULED.replace("id: sc", "id: rt"))
    with pytest.raises(RuleLoadError) as caught:
        load_rule_files(path)
    assert any("rule rt: id: used by a real-time and a scheduled rule" in p for p in caught.value.problems)
    path.write_text("rules:\n" + REAL_TIME.replace("deposit", "nope") + SCHEDULED.replace("now", "never"))
    with pytest.raises(RuleLoadError) as caught:
        load_rule_files(path)
    assert any("rule rt: trigger.event" in p for p in caught.value.problems)
    assert any("rule sc: schedule" in p for p in caught.value.problems)
    with pytest.raises(RuleLoadError, match="does not exist"):
        load_rule_files(tmp_path / "missing.yaml")
