"""Running the real ``smartico-stream`` command for the configuration and start-up error tests: a
clean environment (no ``SMARTICO_STREAM_*`` variable of the test runner leaks in), a config written
next to scratch stores, and the checks every such error must pass."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.common import CLI


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The runner's environment without its SMARTICO_STREAM_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SMARTICO_STREAM_")}
    return {**env, **(extra or {})}


def write_config(tmp: Path, overrides: Mapping[str, Any] | None = None, name: str = "config.yaml") -> Path:
    """A config whose stores are scratch SQLite files in ``tmp``, metrics off, Kafka on a closed port;
    ``overrides`` replaces whole keys of a section (or whole settings)."""
    config: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp / 'state.db'}"},
        "pii": {"store_url": f"sqlite:///{tmp / 'pii.db'}"},
        "metrics": {"enabled": False},
        "kafka": {"config": {"bootstrap.servers": "127.0.0.1:1", "group.id": "cli-errors"}},
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


def cli(args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``smartico-stream ARGS`` to completion."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout_s, cwd=cwd, env=clean_env(env), check=False
    )


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the service's JSON log lines (a start-up error is printed after them)."""
    return [line for line in done.stderr.splitlines() if not line.startswith("{")]


def assert_clean_failure(done: subprocess.CompletedProcess[str], code: int, *needles: str,
                         max_lines: int = 6) -> None:
    """Exit ``code``, no traceback, a short stderr, and every needle (a setting, a resource) in it."""
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = error_lines(done)
    assert 0 < len(lines) <= max_lines, done.stderr[-3000:]
    text = "\n".join(lines)
    for needle in needles:
        assert needle in text, (needle, text)
