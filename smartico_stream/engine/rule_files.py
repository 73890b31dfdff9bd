"""A rule file or folder as one unit: both kinds of rules, loaded together, and the rule-set version
(a digest of the files' bytes) that the running instances and ``rules status`` compare.

The version is a digest of what was read, not a counter: two instances that read the same files
agree on it without talking to each other, and an edit that is undone gives the old version back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from smartico_stream.engine.rules import RuleLoadError, RuleSet, load_rules
from smartico_stream.engine.scheduled.spec import ScheduledRule, load_scheduled_rules

__all__ = ["LoadedRules", "load_rule_files", "rule_files", "rule_set_version"]

# Twelve hex digits: short enough for a status line, and a chance collision between two versions an
# operator deploys is not a concern at this scale (one in ~10^14).
_VERSION_DIGITS = 12


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """Every enabled rule of a rule file or folder, and the version of the files they came from."""

    real_time: RuleSet
    scheduled: dict[str, ScheduledRule]
    version: str

    @classmethod
    def given(cls, real_time: RuleSet, scheduled: dict[str, ScheduledRule] | None = None) -> LoadedRules:
        """Rules built in code (tests, the bench): their version says so."""
        return cls(real_time, dict(scheduled or {}), "given")


def rule_files(path: Path) -> list[Path]:
    """The files ``load_rules`` reads for ``path``: the file itself, or a folder's ``*.yaml`` and
    ``*.yml`` files (hidden entries skipped, as a Kubernetes ConfigMap volume's ``..data`` copies)."""
    if not path.is_dir():
        return [path]
    return sorted(
        p for p in path.rglob("*")
        if p.suffix in (".yaml", ".yml") and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def rule_set_version(path: Path) -> str:
    """The digest of the rule files under ``path`` (names relative to it, and contents).

    :raises RuleLoadError: if a file cannot be read.
    """
    digest = hashlib.sha256()
    for file in rule_files(path):
        name = file.name if file == path else str(file.relative_to(path))
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise RuleLoadError([f"{file}: cannot read: {exc.strerror or exc}"]) from None
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:_VERSION_DIGITS]


def load_rule_files(path: Path) -> LoadedRules:
    """Validate and load both kinds of rules from ``path``, with their version.

    The files are digested before and after they are loaded: a file rewritten meanwhile (a
    deployment copying files one by one) is refused rather than loaded half old, half new.

    :raises RuleLoadError: listing every problem of both kinds.
    """
    if not path.exists():
        raise RuleLoadError([f"{path}: does not exist"])
    before = rule_set_version(path)
    problems: list[str] = []
    real_time = RuleSet.of(())
    scheduled: dict[str, ScheduledRule] = {}
    try:
        real_time = load_rules(path)
    except RuleLoadError as exc:
        problems += exc.problems
    try:
        scheduled = load_scheduled_rules(path)
    except RuleLoadError as exc:
        problems += [p for p in exc.problems if p not in problems]  # a YAML error is reported by both
    clash = sorted({rule.id for rule in real_time.rules} & set(scheduled))
    problems += [f"{path}: rule {rule_id}: id: used by a real-time and a scheduled rule" for rule_id in clash]
    if problems:
        raise RuleLoadError(problems)
    if rule_set_version(path) != before:
        raise RuleLoadError([f"{path}: the rule files changed while they were read; try again"])
    return LoadedRules(real_time, scheduled, before)
