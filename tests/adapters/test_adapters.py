"""Built-in adapters against their golden files, the registry, and the golden runner itself."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.adapters import golden, registry
from smartico_stream.adapters.base import RecordContext
from smartico_stream.adapters.golden import ContractViolation, run_golden, write_golden
from smartico_stream.adapters.registry import (
    ADAPTER_GROUP,
    AdapterLoadError,
    InvalidAdapter,
    UnknownAdapter,
    available_adapters,
    load_adapter,
)
from smartico_stream.events.models import CanonicalEvent, EventType
from smartico_stream_adapters.reference import ReferenceAdapter

BUILT_IN = ("betwave", "reference")

DEPOSIT = {
    "dt_finalized": 1678886400000,
    "ext_brand_id": "YourBrandId",
    "user_ext_id": 42,
    "transaction_id": "dep-1",
    "type": "deposit",
    "amount": "100.00",
    "core_wallet_currency": "EUR",
}


def _jsonl(path: Path, *items: object) -> None:
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))


class _TmpReference(ReferenceAdapter):
    """The reference mapping, with golden cases wherever a test puts them."""

    def __init__(self, directory: Path) -> None:
        self.golden_dir = directory


# Golden files of the built-in adapters -------------------------------------------------------------


@pytest.mark.parametrize("name", BUILT_IN)
def test_golden_files_pass(name: str) -> None:
    report = run_golden(load_adapter(name))
    assert report.passed, report.render()


@pytest.mark.parametrize("name", BUILT_IN)
def test_golden_files_cover_every_event_type_and_the_extra_and_aggregate_paths(name: str) -> None:
    adapter = load_adapter(name)
    directory = golden.golden_dir(adapter)
    events = [
        event
        for path in directory.glob(f"*{golden.EXPECTED_SUFFIX}")
        for line in path.read_bytes().splitlines()
        for event in orjson.loads(line).get("events", [])
    ]
    assert {event["type"] for event in events} == {t.value for t in EventType}
    assert any(event["extra"] for event in events)
    assert any(event.get("aggregates") for event in events)


@pytest.mark.parametrize("name", BUILT_IN)
def test_golden_files_are_what_write_golden_produces(name: str) -> None:
    # The committed expectations must be byte-identical to a regeneration (deterministic output).
    adapter = load_adapter(name)
    directory = golden.golden_dir(adapter)
    for case in golden.golden_cases(adapter):
        inputs = golden.read_inputs(directory / f"{case}{golden.INPUT_SUFFIX}")
        committed = (directory / f"{case}{golden.EXPECTED_SUFFIX}").read_bytes()
        assert golden.render_expected(adapter, inputs) == committed, case


# Registry ------------------------------------------------------------------------------------------


def test_registry_lists_built_in_adapters_sorted() -> None:
    found = available_adapters()
    assert set(BUILT_IN) <= set(found)
    assert list(found) == sorted(found)
    assert all(point.group == ADAPTER_GROUP for point in found.values())


@pytest.mark.parametrize("name", BUILT_IN)
def test_load_adapter_returns_the_named_adapter(name: str) -> None:
    adapter = load_adapter(name)
    assert adapter.name == name
    assert callable(adapter.adapt)


def test_unknown_adapter_names_what_is_installed() -> None:
    with pytest.raises(UnknownAdapter, match=r"'nope'.*installed adapters: .*betwave.*reference") as caught:
        load_adapter("nope")
    assert isinstance(caught.value, LookupError)


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, *points: tuple[str, str]) -> None:
    fakes = [EntryPoint(name=name, value=value, group=ADAPTER_GROUP) for name, value in points]
    monkeypatch.setattr(registry, "entry_points", lambda group: fakes if group == ADAPTER_GROUP else [])


def test_object_that_is_not_an_adapter_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, ("broken", "builtins:dict"))
    with pytest.raises(InvalidAdapter, match="lacks a non-empty string attribute 'name' and a callable 'adapt"):
        load_adapter("broken")


def test_import_failure_is_reported_with_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, ("ghost", "no_such_module_anywhere:Adapter"))
    with pytest.raises(AdapterLoadError, match="cannot import no_such_module_anywhere:Adapter"):
        load_adapter("ghost")


def test_a_name_claimed_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(
        monkeypatch,
        ("twin", "smartico_stream_adapters.reference:ReferenceAdapter"),
        ("twin", "smartico_stream_adapters.betwave:BetwaveAdapter"),
    )
    with pytest.raises(AdapterLoadError, match="registered more than once"):
        load_adapter("twin")


# Golden runner -------------------------------------------------------------------------------------


def test_mismatch_gives_a_diff_naming_the_field(tmp_path: Path) -> None:
    _jsonl(tmp_path / "deposit.input.jsonl", {"stream": "payments", "topic": "pay", "key": "42", "value": DEPOSIT})
    adapter = _TmpReference(tmp_path)
    write_golden(adapter, "deposit")
    expected = orjson.loads((tmp_path / "deposit.expected.jsonl").read_bytes())
    expected["events"][0]["amount"] = "99.00"
    _jsonl(tmp_path / "deposit.expected.jsonl", expected)

    report = run_golden(adapter)

    assert not report.passed
    [result] = report.cases
    assert (result.case, result.line, result.passed) == ("deposit", 1, False)
    assert '-      "amount": "99.00",' in result.diff
    assert '+      "amount": "100.00",' in result.diff
    rendered = report.render()
    assert "FAIL  deposit" in rendered
    assert "line 1:" in rendered
    assert '"amount": "99.00"' in rendered


def test_expected_errors_match_on_class_and_message_substring(tmp_path: Path) -> None:
    no_id = {key: value for key, value in DEPOSIT.items() if key != "transaction_id"}
    negative = {**DEPOSIT, "amount": "-1"}
    _jsonl(
        tmp_path / "errors.input.jsonl",
        {"stream": "payments", "value": no_id},
        {"stream": "payments", "value": negative},
        {"stream": "payments", "value": "[1, 2]"},
        {"stream": "payments", "value": orjson.dumps(DEPOSIT).decode()},  # raw JSON text of an object
    )
    _jsonl(
        tmp_path / "errors.expected.jsonl",
        {"error": "MissingField", "message_contains": "'transaction_id'"},
        {"error": "ValidationError", "message_contains": "amount: Input should be greater than or equal to 0"},
        {"error": "PassthroughValue", "message_contains": "not an object"},
        {"error": "MissingField", "message_contains": "wrong on purpose"},
    )

    report = run_golden(_TmpReference(tmp_path))

    assert [result.passed for result in report.cases] == [True, True, True, False]
    assert '"events": [' in report.cases[3].diff  # the object in a string was decoded and mapped


def test_write_golden_is_byte_identical_across_runs(tmp_path: Path) -> None:
    _jsonl(
        tmp_path / "mix.input.jsonl",
        {"stream": "payments", "value": {**DEPOSIT, "zeta": 1, "alpha": {"b": 2, "a": 1}}},
        {"stream": "payments", "value": {**DEPOSIT, "type": "refund"}},
    )
    adapter = _TmpReference(tmp_path)
    first = write_golden(adapter, "mix").read_bytes()
    second = write_golden(adapter, "mix").read_bytes()
    assert first == second
    assert first.count(b"\n") == 2
    assert run_golden(adapter).passed


def test_missing_and_surplus_expected_lines_fail(tmp_path: Path) -> None:
    line = {"stream": "payments", "value": DEPOSIT}
    _jsonl(tmp_path / "short.input.jsonl", line, line)
    _jsonl(tmp_path / "short.expected.jsonl", {"events": []})
    _jsonl(tmp_path / "orphan.expected.jsonl", {"events": []})
    report = run_golden(_TmpReference(tmp_path))
    failures = {(result.case, result.line) for result in report.cases if not result.passed}
    assert failures == {("short", 1), ("short", 2), ("orphan", 0)}


def test_no_cases_is_not_a_pass(tmp_path: Path) -> None:
    report = run_golden(_TmpReference(tmp_path / "empty"))
    assert not report.passed
    assert "no golden cases" in report.render()


def test_malformed_input_line_is_reported_not_raised(tmp_path: Path) -> None:
    _jsonl(tmp_path / "bad.input.jsonl", {"stream": "lottery", "value": {}})
    _jsonl(tmp_path / "bad.expected.jsonl", {"events": []})
    report = run_golden(_TmpReference(tmp_path))
    assert not report.passed
    assert "'stream' must be one of" in report.render()


class _Impure:
    """Breaks the contract in the way the constructor says."""

    name = "impure"

    def __init__(self, directory: Path, misbehaviour: str) -> None:
        self.golden_dir = directory
        self._misbehaviour = misbehaviour
        self._calls = itertools.count()

    def adapt(self, message: Mapping[str, Any], context: RecordContext) -> list[CanonicalEvent]:
        if self._misbehaviour == "mutate":
            message.pop("amount")  # type: ignore[attr-defined]
        if self._misbehaviour == "clock":
            message = {**message, "transaction_id": f"dep-{next(self._calls)}"}
        if self._misbehaviour == "not-a-list":
            return "deposit"  # type: ignore[return-value]
        return ReferenceAdapter().adapt(message, context)


@pytest.mark.parametrize(
    ("misbehaviour", "complaint"),
    [("mutate", "mutated the message"), ("clock", "different results"), ("not-a-list", "sequence of events")],
)
def test_contract_violations_fail_and_are_never_recorded(tmp_path: Path, misbehaviour: str, complaint: str) -> None:
    _jsonl(tmp_path / "case.input.jsonl", {"stream": "payments", "value": DEPOSIT})
    _jsonl(tmp_path / "case.expected.jsonl", {"events": []})
    adapter = _Impure(tmp_path, misbehaviour)
    report = run_golden(adapter)
    assert not report.passed
    assert complaint in report.cases[0].diff
    with pytest.raises(ContractViolation, match=complaint):
        write_golden(adapter, "case")
