"""The wheel a user installs: built from this checkout, offline, and read back.

It must carry every package (pyproject lists them explicitly, because ``adapters/`` installs under
another name), the ``py.typed`` markers that let adapter authors type-check against our models,
the data files the code opens at run time, and the console script and adapter entry points.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend comes from the test environment, so nothing is downloaded.
    completed = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (path,) = out.glob("smartico_stream-*.whl")
    archive = zipfile.ZipFile(path)
    yield archive
    archive.close()


def _packages(source_dir: str, installed_as: str) -> list[str]:
    found = []
    for init in sorted((ROOT / source_dir).rglob("__init__.py")):
        if "__pycache__" not in init.parts:
            found.append("/".join((installed_as, *init.relative_to(ROOT / source_dir).parent.parts)))
    return found


def test_the_wheel_holds_every_package_of_the_source_tree(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    expected = _packages("smartico_stream", "smartico_stream") + _packages("adapters", "smartico_stream_adapters")
    missing = [package for package in expected if f"{package}/__init__.py" not in names]
    assert not missing, f"list these in pyproject.toml [tool.setuptools] packages: {missing}"


def test_the_wheel_is_typed_and_ships_its_data_files(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "smartico_stream/py.typed" in names
    assert "smartico_stream_adapters/py.typed" in names
    assert "smartico_stream/demo/rules.yaml" in names
    for adapter in ("reference", "betwave"):
        golden = [n for n in names if n.startswith(f"smartico_stream_adapters/{adapter}/golden/")]
        source = list((ROOT / "adapters" / adapter / "golden").glob("*"))
        assert len(golden) == len(source) > 0, f"{adapter}: golden files missing from the wheel"
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]


def test_the_wheel_declares_the_console_script_and_the_adapter_entry_points(wheel: zipfile.ZipFile) -> None:
    entry_points = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert re.search(r"^smartico-stream\s*=\s*smartico_stream\.cli:main$", entry_points, re.M), entry_points
    section = entry_points.split("[smartico_stream.adapters]", 1)[1]
    assert re.search(r"^reference\s*=\s*smartico_stream_adapters\.reference:ReferenceAdapter$", section, re.M)
    assert re.search(r"^betwave\s*=\s*smartico_stream_adapters\.betwave:BetwaveAdapter$", section, re.M)
