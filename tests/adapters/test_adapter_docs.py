"""docs/adapters.md's example package, installed and run exactly as the page writes it.

Every fenced block the page marks with ``<!-- example-file: PATH -->`` on the line before it is
written to PATH; the package is pip-installed offline into a scratch directory and the installed
``smartico-stream`` discovers it through its entry point, as an operator's deployment would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.common import CLI, REPO

DOC = REPO / "docs" / "adapters.md"
PACKAGE = "acme-smartico-adapter"

# A marker line, then a fence with any info string, then the body up to the closing fence.
_BLOCK = re.compile(r"^<!-- example-file: (?P<path>\S+) -->\n```[^\n]*\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)


def example_files(text: str) -> dict[str, str]:
    """PATH -> content of every block of ``text`` marked ``<!-- example-file: PATH -->``."""
    files: dict[str, str] = {}
    for match in _BLOCK.finditer(text):
        path = match["path"]
        assert path not in files, f"{path} is marked twice in {DOC.name}"
        files[path] = match["body"]
    return files


def _write_example(root: Path) -> Path:
    for relative, body in example_files(DOC.read_text(encoding="utf-8")).items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
    return root / PACKAGE


def _run(*args: str, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The doc's package, pip-installed (offline, no dependencies) into a directory of its own."""
    root = tmp_path_factory.mktemp("doc-example")
    package = _write_example(root / "src")
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(package)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def test_the_doc_marks_the_whole_example_package() -> None:
    files = example_files(DOC.read_text(encoding="utf-8"))
    assert set(files) == {
        f"{PACKAGE}/pyproject.toml",
        f"{PACKAGE}/acme_adapter/__init__.py",
        f"{PACKAGE}/acme_adapter/golden/deposits.input.jsonl",
        f"{PACKAGE}/acme_adapter/golden/deposits.expected.jsonl",
    }
    # The adapter imports only the documented public modules.
    imports = set(re.findall(r"^from (\S+) import", files[f"{PACKAGE}/acme_adapter/__init__.py"], re.MULTILINE))
    assert imports <= {"collections.abc", "typing", "smartico_stream.adapters.base", "smartico_stream.events"}


def test_every_import_the_doc_shows_works() -> None:
    # Every `from smartico_stream... import ...` line anywhere on the page, code blocks and prose alike.
    text = DOC.read_text(encoding="utf-8")
    statements = sorted(set(re.findall(r"^from smartico_stream\S* import [\w, ]+$", text, re.MULTILINE)))
    assert statements
    for statement in statements:
        command = [sys.executable, "-c", statement]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{statement}: {done.stderr}"
    assert "smartico_stream_adapters` provides" not in text


def test_the_installed_example_is_listed(installed: Path, tmp_path: Path) -> None:
    done = _run(*CLI, "adapters", "list", pythonpath=installed, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^acme\s+acme_adapter:AcmeAdapter$", done.stdout, re.MULTILINE), done.stdout


def test_the_installed_example_passes_its_golden_files(installed: Path, tmp_path: Path) -> None:
    done = _run(*CLI, "adapters", "test", "acme", pythonpath=installed, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  deposits  (5 line(s))" in done.stdout
    assert done.stdout.rstrip().endswith("PASS: 1 of 1 case(s) passed")
    # The golden files ran from the installed package (package data), not from the scratch source tree.
    assert str(installed / "acme_adapter" / "golden") in done.stdout
