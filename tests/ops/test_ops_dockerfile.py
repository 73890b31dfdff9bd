"""The Dockerfile, checked without a Docker engine: parsed instruction by instruction, plus a real
wheel build from exactly the files its build stage copies.

- multi-stage; the final stage starts from a slim Python base, not from the build stage;
- the final stage runs as a non-root numeric user it creates, installs nothing (no apt-get, pip,
  compiler) and copies only the virtualenv and tini from the build stage;
- the entrypoint is exec form with tini first, so SIGTERM reaches the service as PID 1's child;
- the metrics port the config defaults to is exposed, and the HEALTHCHECK asks /healthz on it;
- the build stage's COPY sources exist, and building a wheel from only those files yields every
  package of the source tree and the `smartico-stream` console script.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smartico_stream.config import MetricsSettings
from tests.support.common import REPO as ROOT

DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(apt-get|apt|apk|pip|pip3|gcc|g\+\+|cc|make|build-essential|python3?-dev|poetry)\b")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continuation are removed by Docker too
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, number))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def test_multi_stage_with_a_slim_python_final_stage(stages):
    assert len(stages) >= 2, "build and runtime stages"
    build, final = stages[0], stages[-1]
    assert build.name, "the build stage is named, so the final stage copies from it by name"
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", final.base), final.base
    assert final.base not in {s.name for s in stages if s.name}, "the final stage must not build on the build stage"
    copies_from = [i.args for i in final.all("COPY") if "--from=" in i.args]
    assert copies_from and all(f"--from={build.name}" in c for c in copies_from), copies_from


def test_final_stage_has_no_build_tools_and_copies_only_the_runtime(stages):
    final = stages[-1]
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run.args), f"line {run.line}: the final stage installs or builds: {run.args}"
    copied = []
    for copy in final.all("COPY") + final.all("ADD"):
        words = [w for w in shlex.split(copy.args) if not w.startswith("--")]
        copied += words[:-1]
    assert copied, "the final stage copies the virtualenv"
    for source in copied:
        assert source in {"/opt/venv", "/usr/bin/tini-static", "/usr/bin/tini"}, (
            f"the final stage copies {source!r}: only the virtualenv and tini belong there")


def test_runs_as_a_non_root_numeric_user_it_creates(stages):
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage sets USER"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1].args}: numeric and not root (runAsNonRoot checks a uid)"
    created = " ".join(r.args for r in final.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", created), f"uid {uid} is created in the final stage"
    last_user_line = users[-1].line
    assert all(r.line < last_user_line for r in final.all("RUN")), "nothing runs as root after USER"
    # The Kubernetes Deployment runs the same uid (tests/ops/test_ops_kubernetes.py reads it from here).
    assert uid == "10001"


def test_exec_form_entrypoint_with_tini_so_sigterm_reaches_the_service(stages):
    final = stages[-1]
    entrypoint = final.all("ENTRYPOINT")
    assert len(entrypoint) == 1
    argv = json.loads(entrypoint[0].args)  # shell form would not be JSON: /bin/sh -c would be PID 1
    assert isinstance(argv, list) and argv
    assert Path(argv[0]).name == "tini", argv
    assert "smartico-stream" in argv, argv
    cmd = json.loads(final.all("CMD")[-1].args)
    assert cmd[:1] == ["run"] and "--config" in cmd, cmd
    for signal in final.all("STOPSIGNAL"):
        assert signal.args in ("SIGTERM", "15")


def test_exposes_the_metrics_port_and_checks_healthz(stages):
    final = stages[-1]
    port = MetricsSettings().port
    exposed = {p.split("/")[0] for i in final.all("EXPOSE") for p in i.args.split()}
    assert str(port) in exposed, exposed
    health = final.all("HEALTHCHECK")
    assert health and f"127.0.0.1:{port}/healthz" in health[-1].args, "HEALTHCHECK asks /healthz (liveness)"


def test_build_stage_sources_exist_and_build_a_complete_wheel(stages, tmp_path):
    build = stages[0]
    context = tmp_path / "context"
    context.mkdir()
    for copy in build.all("COPY"):
        words = [w for w in shlex.split(copy.args) if not w.startswith("--")]
        for source in words[:-1]:
            path = ROOT / source
            assert path.exists(), f"line {copy.line}: COPY {source}: no such file in the repository"
            target = context / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, target)
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("smartico_stream-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert re.search(r"^smartico-stream\s*=\s*smartico_stream\.cli:main", entry_points, re.M), entry_points
    missing = []
    for source_dir, installed_as in (("smartico_stream", "smartico_stream"), ("adapters", "smartico_stream_adapters")):
        for init in sorted((ROOT / source_dir).rglob("__init__.py")):
            if "__pycache__" in init.parts:
                continue
            relative = init.relative_to(ROOT / source_dir)
            if f"{installed_as}/{relative.as_posix()}" not in names:
                missing.append(f"{installed_as}.{'.'.join(relative.parent.parts)}".rstrip("."))
    assert not missing, (
        f"the image would lack these packages: {missing}; list them in pyproject.toml [tool.setuptools] packages")
