"""An adapter's own exception (a bug) is never a golden expectation; deliberate rejections are."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.adapters.base import InvalidField, RecordContext
from smartico_stream.adapters.golden import AdapterBug, ContractViolation, run_golden, write_golden
from smartico_stream.events.models import CanonicalEvent
from smartico_stream_adapters.reference import ReferenceAdapter
from tests.support.common import CLI

DEPOSIT = {
    "dt_finalized": 1678886400000,
    "ext_brand_id": "b1",
    "user_ext_id": 42,
    "transaction_id": "dep-1",
    "type": "deposit",
    "amount": "100.00",
    "core_wallet_currency": "EUR",
}


def _jsonl(path: Path, *items: object) -> None:
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))


class _Buggy(ReferenceAdapter):
    """The reference mapping, except that a record with ``"boom"`` hits a bug of the given class."""

    def __init__(self, directory: Path, bug: type[Exception]) -> None:
        self.golden_dir = directory
        self.bug = bug

    def adapt(self, message: Mapping[str, Any], context: RecordContext) -> list[CanonicalEvent]:
        if "boom" in message:
            if self.bug is KeyError:
                return [message["no_such_key"]]  # the typical slip: an unguarded lookup
            raise self.bug("bad record")
        return list(super().adapt(message, context))


@pytest.mark.parametrize("bug", [KeyError, TypeError, ZeroDivisionError, AttributeError])
def test_update_refuses_an_exception_that_is_not_a_rejection(tmp_path: Path, bug: type[Exception]) -> None:
    _jsonl(tmp_path / "case.input.jsonl", {"stream": "payments", "value": DEPOSIT},
           {"stream": "payments", "value": {**DEPOSIT, "boom": 1}})
    with pytest.raises(AdapterBug) as raised:
        write_golden(_Buggy(tmp_path, bug), "case")
    text = str(raised.value)
    assert text.startswith(f"case.input.jsonl line 2: adapt() raised {bug.__name__}, which is a bug in the adapter")
    # The adapter's own frame, with its file and line, and the exception's last line.
    assert "Traceback (most recent call last):" in text
    assert f'"{__file__}", line' in text and "in adapt" in text
    assert text.rstrip().splitlines()[-1].startswith(bug.__name__)
    # The runner's own frame is not shown; nothing was written.
    assert "_call" not in text
    assert not (tmp_path / "case.expected.jsonl").exists()
    assert isinstance(raised.value, ContractViolation)


def test_a_recorded_bug_fails_the_run_with_the_traceback(tmp_path: Path) -> None:
    # An expectation written before this check existed (or by hand) does not make a bug pass.
    _jsonl(tmp_path / "case.input.jsonl", {"stream": "payments", "value": {**DEPOSIT, "boom": 1}})
    _jsonl(tmp_path / "case.expected.jsonl", {"error": "KeyError", "message_contains": "no_such_key"})
    report = run_golden(_Buggy(tmp_path, KeyError))
    assert not report.passed
    assert "case.input.jsonl line 1: adapt() raised KeyError" in report.cases[0].diff
    assert "Traceback (most recent call last):" in report.render()


class _Rejecting(ReferenceAdapter):
    def __init__(self, directory: Path) -> None:
        self.golden_dir = directory

    def adapt(self, message: Mapping[str, Any], context: RecordContext) -> list[CanonicalEvent]:
        if "odd" in message:
            raise InvalidField("odd: must be absent")
        return list(super().adapt(message, context))


def test_deliberate_rejections_are_still_recorded(tmp_path: Path) -> None:
    _jsonl(tmp_path / "case.input.jsonl",
           {"stream": "payments", "value": {**DEPOSIT, "odd": 1}},  # AdapterError subclass
           {"stream": "payments", "value": {**DEPOSIT, "amount": "-1"}},  # pydantic ValidationError
           {"stream": "payments", "value": "[1]"})  # the runner's PassthroughValue
    adapter = _Rejecting(tmp_path)
    path = write_golden(adapter, "case")
    errors = [orjson.loads(line)["error"] for line in path.read_bytes().splitlines()]
    assert errors == ["InvalidField", "ValidationError", "PassthroughValue"]
    assert run_golden(adapter).passed


_BUGGY_PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "buggy-adapter"
        version = "0.1.0"

        [project.entry-points."smartico_stream.adapters"]
        buggy = "buggy_adapter:BuggyAdapter"

        [tool.setuptools.package-data]
        buggy_adapter = ["golden/*.jsonl"]
    """,
    "buggy_adapter/__init__.py": """
        from smartico_stream.events import Payment


        class BuggyAdapter:
            name = "buggy"

            def adapt(self, message, context):
                return [
                    Payment(
                        type="deposit",
                        event_time=message["ts"],
                        brand_id="b",
                        user_id="u",
                        event_id="e",
                        amount=message["amount"],
                        currency="EUR",
                    )
                ]
    """,
    "buggy_adapter/golden/case.input.jsonl": """
        {"stream": "payments", "value": {"ts": 1709251200000, "amount": "1"}}
        {"stream": "payments", "value": {"ts": 1709251200000}}
    """,
    "buggy_adapter/golden/case.expected.jsonl": """
        {"events": []}
    """,
}


def test_cli_update_exits_1_with_the_traceback_and_keeps_the_expected_file(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for relative, body in _BUGGY_PACKAGE.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = site / "buggy_adapter" / "golden" / "case.expected.jsonl"
    before = expected.read_bytes()
    done = subprocess.run(
        [*CLI, "adapters", "test", "buggy", "--update"], env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "PASS" not in done.stdout
    assert done.stderr.startswith(
        "buggy: refusing to update: case.input.jsonl line 2: adapt() raised KeyError, which is a bug in the adapter"
    )
    assert f'File "{site / "buggy_adapter" / "__init__.py"}", line 15, in adapt' in done.stderr
    assert done.stderr.rstrip().endswith("KeyError: 'amount'")
    assert expected.read_bytes() == before
