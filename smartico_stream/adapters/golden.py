"""Golden files: recorded operator messages and the exact canonical output they must map to.

Layout, in a ``golden/`` folder beside the module that defines the adapter class (an adapter may
point elsewhere with a ``golden_dir: pathlib.Path`` attribute)::

    golden/<case>.input.jsonl      one record per line:
        {"stream": "payments", "topic": "payments", "key": "u1", "headers": {"h": "v"}, "value": {...}}
        ("topic" defaults to the stream name; "key" and "headers" are optional)
    golden/<case>.expected.jsonl   one line per input line, either
        {"events": [<the event as JSON, None fields left out, no "source">, ...]}
        or {"error": "<exception class name>", "message_contains": "<substring of its message>"}

``value`` is normally the decoded JSON object. A string ``value`` holds raw JSON text: if it decodes
to an object that object is used; otherwise (not JSON, or JSON that is not an object) the pipeline
would dead-letter the record before any adapter runs, so the line's outcome is the runner's own
``PassthroughValue`` error and the adapter is not called.

An error's message is matched against the dead-letter rendering (``describe_error``: field by field,
without input values, for pydantic errors) and against ``str(exc)``. ``write_golden`` records the
former, so expected files never contain the personal data a failing input may hold.

Besides comparing output, the runner checks the adapter contract on every line: the result is a
sequence of drafts (or canonical events) validated as the pipeline validates them, the input mapping
is not mutated, and a second call gives the same
output (adapters must not read clocks, randomness or state). An exception that is not a deliberate
rejection (an ``AdapterError`` or a pydantic ``ValidationError``) is an adapter bug, never an
expectation: the line fails with the adapter's traceback and ``write_golden`` refuses to record it.
"""

from __future__ import annotations

import copy
import difflib
import json
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from smartico_stream.adapters.base import Adapter, AdapterError, RecordContext
from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import Stream
from smartico_stream.events.records import UnknownDraftType, dump_event, validate_event
from smartico_stream.pipeline.errors import describe_error

GOLDEN_DIR_NAME = "golden"
INPUT_SUFFIX = ".input.jsonl"
EXPECTED_SUFFIX = ".expected.jsonl"

_INPUT_KEYS = frozenset({"stream", "topic", "key", "headers", "value"})
_DUMP_EXCLUDE = frozenset({"source"})


class GoldenFileError(ValueError):
    """A golden input or expected file is malformed (the files are wrong, not the adapter)."""


class PassthroughValue(ValueError):
    """A golden input whose ``value`` is not a JSON object. The pipeline rejects such records
    before the adapter (DecodeError / NotAnObject), so the runner does not call the adapter and
    records this error as the line's outcome."""


class ContractViolation(AssertionError):
    """The adapter broke the contract (returned non-events, mutated its input, or is not
    deterministic). Never a valid expectation: ``write_golden`` refuses to record it."""


class AdapterBug(ContractViolation):
    """``adapt()`` raised an exception that is not a deliberate rejection (say a ``KeyError``): a bug
    in the adapter, so never a valid expectation. The message names the golden file and line and
    carries the adapter's traceback."""


# What an adapter may raise on purpose for bad input; anything else is a bug (see docs/adapters.md).
DELIBERATE_REJECTIONS: tuple[type[Exception], ...] = (AdapterError, ValidationError)


@dataclass(frozen=True, slots=True)
class GoldenInput:
    """One parsed line of a ``<case>.input.jsonl`` file (``source``: the file's name, for messages)."""

    line: int
    stream: Stream
    topic: str
    key: str | None
    headers: Mapping[str, str]
    value: Any
    source: str = ""

    def context(self) -> RecordContext:
        """The RecordContext the pipeline would build for this record."""
        return RecordContext(
            stream=self.stream,
            topic=self.topic,
            key=self.key,
            headers={name: text.encode() for name, text in self.headers.items()},
        )


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The verdict for one input line of one case. ``diff`` explains a failure (empty on success)."""

    case: str
    line: int
    passed: bool
    diff: str = ""


@dataclass(slots=True)
class GoldenReport:
    """Every line of every golden case of one adapter."""

    adapter: str
    golden_dir: Path
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when there is at least one line and every line passed: an adapter without golden
        cases is untested, not correct."""
        return bool(self.cases) and all(result.passed for result in self.cases)

    def render(self) -> str:
        """A readable summary: PASS/FAIL per case and, for each failing line, a unified diff of the
        expected and actual outcome as pretty JSON (indent 2, sorted keys)."""
        if not self.cases:
            return f"{self.adapter}: FAIL - no golden cases in {self.golden_dir} (add <case>{INPUT_SUFFIX})"
        by_case: dict[str, list[CaseResult]] = {}
        for result in self.cases:
            by_case.setdefault(result.case, []).append(result)
        out = [f"{self.adapter}: {len(by_case)} golden case(s) in {self.golden_dir}"]
        failed_cases = 0
        for case, results in by_case.items():
            failures = [result for result in results if not result.passed]
            if not failures:
                out.append(f"  PASS  {case}  ({len(results)} line(s))")
                continue
            failed_cases += 1
            out.append(f"  FAIL  {case}  ({len(failures)} of {len(results)} line(s) failed)")
            for result in failures:
                out.append(f"    line {result.line}:" if result.line else "    file:")
                out.extend(f"      {text}" for text in result.diff.splitlines())
        verdict = "PASS" if failed_cases == 0 else "FAIL"
        out.append(f"{verdict}: {len(by_case) - failed_cases} of {len(by_case)} case(s) passed")
        return "\n".join(out)


@dataclass(frozen=True, slots=True)
class _Outcome:
    data: dict[str, Any]  # what an expected line would say
    texts: tuple[str, ...] = ()  # error renderings message_contains may match


# Locating cases -------------------------------------------------------------------------------


def golden_dir(adapter: Adapter) -> Path:
    """The adapter's ``golden_dir`` attribute, else ``golden/`` beside the module of its class."""
    override = getattr(adapter, "golden_dir", None)
    if override is not None:
        return Path(override)
    module = sys.modules.get(type(adapter).__module__)
    module_file = getattr(module, "__file__", None)
    if module_file is None:
        raise GoldenFileError(
            f"cannot locate the module of {type(adapter).__qualname__}; set a golden_dir attribute"
        )
    return Path(module_file).resolve().parent / GOLDEN_DIR_NAME


def golden_cases(adapter: Adapter) -> list[str]:
    """Names of the adapter's cases (``<case>.input.jsonl`` files), sorted."""
    directory = golden_dir(adapter)
    if not directory.is_dir():
        return []
    return sorted(path.name[: -len(INPUT_SUFFIX)] for path in directory.glob(f"*{INPUT_SUFFIX}"))


# Parsing ----------------------------------------------------------------------------------------


def _non_blank_lines(path: Path) -> list[tuple[int, bytes]]:
    lines = path.read_bytes().split(b"\n")
    return [(number, text) for number, text in enumerate(lines, start=1) if text.strip()]


def _parse_input(number: int, text: bytes, source: str = "") -> GoldenInput:
    try:
        item = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise GoldenFileError(f"input line {number} is not JSON: {exc}") from None
    if not isinstance(item, dict):
        raise GoldenFileError(f"input line {number} must be a JSON object")
    unknown = sorted(set(item) - _INPUT_KEYS)
    if unknown:
        raise GoldenFileError(f"input line {number} has unknown keys {unknown}; allowed: {sorted(_INPUT_KEYS)}")
    if "value" not in item:
        raise GoldenFileError(f"input line {number} has no 'value'")
    try:
        stream = Stream(str(item.get("stream")))
    except ValueError:
        names = ", ".join(s.value for s in Stream)
        raise GoldenFileError(f"input line {number}: 'stream' must be one of {names}") from None
    topic = item.get("topic", stream.value)
    key = item.get("key")
    headers = item.get("headers") or {}
    if not isinstance(topic, str) or not (key is None or isinstance(key, str)):
        raise GoldenFileError(f"input line {number}: 'topic' and 'key' must be strings")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise GoldenFileError(f"input line {number}: 'headers' must map strings to strings")
    return GoldenInput(number, stream, topic, key, headers, item["value"], source)


def read_inputs(path: Path) -> list[GoldenInput]:
    """Parse a ``<case>.input.jsonl`` file (blank lines are skipped); ``GoldenFileError`` if malformed."""
    return [_parse_input(number, text, path.name) for number, text in _non_blank_lines(path)]


def _check_expected(number: int, text: bytes) -> dict[str, Any]:
    try:
        expected = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise GoldenFileError(f"expected line {number} is not JSON: {exc}") from None
    if isinstance(expected, dict):
        if set(expected) == {"events"} and isinstance(expected["events"], list):
            return expected
        if (
            set(expected) in ({"error"}, {"error", "message_contains"})
            and isinstance(expected["error"], str)
            and isinstance(expected.get("message_contains", ""), str)
        ):
            return expected
    raise GoldenFileError(
        f'expected line {number} must be {{"events": [...]}} or {{"error": "...", "message_contains": "..."}}'
    )


# Running ----------------------------------------------------------------------------------------


def _message(value: Any) -> Mapping[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise PassthroughValue(
                "value is not valid JSON; the pipeline dead-letters it (DecodeError) before any adapter"
            ) from None
        if isinstance(decoded, dict):
            return decoded
        value = decoded
    raise PassthroughValue(
        f"value is a JSON {type(value).__name__}, not an object; the pipeline dead-letters it "
        "(NotAnObject) before any adapter"
    )


def _dump_events(result: object) -> list[dict[str, Any]]:
    if not isinstance(result, Sequence) or isinstance(result, str | bytes):
        raise ContractViolation(f"adapt() must return a sequence of events, not {type(result).__name__}")
    dumped = []
    for position, draft in enumerate(result):
        if not isinstance(draft, Mapping | CanonicalEvent):
            raise ContractViolation(
                f"adapt() returned {type(draft).__name__} at position {position}, not an event draft"
            )
        try:
            event = validate_event(draft)
        except UnknownDraftType as exc:
            raise ContractViolation(f"adapt() returned a draft at position {position} with an unknown type") from exc
        dumped.append(dump_event(event, exclude=_DUMP_EXCLUDE))
    return dumped


def _call(adapter: Adapter, message: Mapping[str, Any], context: RecordContext) -> list[dict[str, Any]] | Exception:
    pristine = copy.deepcopy(message)
    try:
        events = _dump_events(adapter.adapt(message, context))
    except ContractViolation:
        raise
    except Exception as exc:  # noqa: BLE001 - every adapter failure is an outcome to compare, whatever its class
        outcome: list[dict[str, Any]] | Exception = exc
    else:
        outcome = events
    if message != pristine:
        raise ContractViolation("adapt() mutated the message it was given; adapters must be pure")
    return outcome


def _error_outcome(exc: Exception) -> _Outcome:
    _, described = describe_error(exc)
    return _Outcome({"error": type(exc).__name__, "message_contains": described}, (described, str(exc)))


def _adapter_bug(item: GoldenInput, exc: Exception) -> AdapterBug:
    """The refusal for an exception that is not a deliberate rejection: where (file and line) and
    the adapter's traceback, without the runner's own frame."""
    frames = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    trace = "".join(traceback.format_exception(type(exc), exc, frames)).rstrip()
    where = f"{item.source or 'input'} line {item.line}"
    return AdapterBug(
        f"{where}: adapt() raised {type(exc).__name__}, which is a bug in the adapter, not a rejection; "
        "raise AdapterError (or MissingField, InvalidField, UnknownEventType) for bad input or let the "
        f"canonical model's ValidationError propagate. The adapter's traceback:\n{trace}"
    )


def _same(first: list[dict[str, Any]] | Exception, second: list[dict[str, Any]] | Exception) -> bool:
    if isinstance(first, Exception) or isinstance(second, Exception):
        return type(first) is type(second) and str(first) == str(second)
    return first == second


def run_line(adapter: Adapter, item: GoldenInput) -> dict[str, Any]:
    """What the expected file should say for ``item``. ``ContractViolation`` if the adapter
    misbehaves (``AdapterBug`` if it raised anything but a deliberate rejection)."""
    return _run_line(adapter, item).data


def _run_line(adapter: Adapter, item: GoldenInput) -> _Outcome:
    try:
        message = _message(item.value)
    except PassthroughValue as exc:
        return _error_outcome(exc)
    context = item.context()
    first = _call(adapter, copy.deepcopy(message), context)
    second = _call(adapter, copy.deepcopy(message), context)
    if not _same(first, second):
        raise ContractViolation("two calls with the same input gave different results; adapters must be pure")
    if isinstance(first, Exception):
        if not isinstance(first, DELIBERATE_REJECTIONS):
            raise _adapter_bug(item, first)
        return _error_outcome(first)
    return _Outcome({"events": first})


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def _diff(case: str, line: int, expected: Any, actual: Any) -> str:
    return "\n".join(
        difflib.unified_diff(
            _pretty(expected),
            _pretty(actual),
            fromfile=f"{case}{EXPECTED_SUFFIX} (expected, input line {line})",
            tofile="actual",
            lineterm="",
        )
    )


def _matches(expected: dict[str, Any], actual: _Outcome) -> bool:
    if "events" in expected:
        return actual.data == expected
    if actual.data.get("error") != expected["error"]:
        return False
    wanted = expected.get("message_contains", "")
    return any(wanted in text for text in actual.texts)


def _judge(adapter: Adapter, case: str, item: GoldenInput, expected_line: tuple[int, bytes] | None) -> CaseResult:
    try:
        actual = _run_line(adapter, item)
    except ContractViolation as exc:
        return CaseResult(case, item.line, False, f"adapter contract violation: {exc}")
    if expected_line is None:
        return CaseResult(case, item.line, False, _diff(case, item.line, None, actual.data))
    try:
        expected = _check_expected(*expected_line)
    except GoldenFileError as exc:
        return CaseResult(case, item.line, False, str(exc))
    if _matches(expected, actual):
        return CaseResult(case, item.line, True)
    return CaseResult(case, item.line, False, _diff(case, item.line, expected, actual.data))


def _run_case(adapter: Adapter, directory: Path, case: str) -> list[CaseResult]:
    expected_path = directory / f"{case}{EXPECTED_SUFFIX}"
    try:
        inputs = read_inputs(directory / f"{case}{INPUT_SUFFIX}")
    except GoldenFileError as exc:
        return [CaseResult(case, 0, False, str(exc))]
    if not expected_path.is_file():
        return [CaseResult(case, 0, False, f"{expected_path.name} is missing; generate it with --update and review it")]
    expected_lines = _non_blank_lines(expected_path)
    results = [
        _judge(adapter, case, item, expected_lines[index] if index < len(expected_lines) else None)
        for index, item in enumerate(inputs)
    ]
    for number, _ in expected_lines[len(inputs):]:
        results.append(CaseResult(case, number, False, f"expected line {number} has no input line"))
    return results


def run_golden(adapter: Adapter) -> GoldenReport:
    """Run every golden case of ``adapter`` and compare each line with its expectation."""
    directory = golden_dir(adapter)
    report = GoldenReport(adapter=str(getattr(adapter, "name", type(adapter).__name__)), golden_dir=directory)
    for case in golden_cases(adapter):
        report.cases.extend(_run_case(adapter, directory, case))
    if directory.is_dir():
        for orphan in sorted(directory.glob(f"*{EXPECTED_SUFFIX}")):
            case = orphan.name[: -len(EXPECTED_SUFFIX)]
            if not (directory / f"{case}{INPUT_SUFFIX}").is_file():
                report.cases.append(CaseResult(case, 0, False, f"{orphan.name} has no {case}{INPUT_SUFFIX}"))
    return report


def render_expected(adapter: Adapter, inputs: Sequence[GoldenInput]) -> bytes:
    """The expected-file content for ``inputs``: one compact JSON line each, keys sorted, so the
    same input always gives byte-identical files."""
    lines = [orjson.dumps(_run_line(adapter, item).data, option=orjson.OPT_SORT_KEYS) for item in inputs]
    return b"".join(line + b"\n" for line in lines)


def write_golden(adapter: Adapter, case_name: str) -> Path:
    """Regenerate ``<case_name>.expected.jsonl`` from the adapter's current output and return its
    path. Review the result by hand: it becomes the truth the adapter is held to. Raises
    ``FileNotFoundError`` without an input file, ``GoldenFileError`` if it is malformed and
    ``ContractViolation`` if the adapter misbehaves, ``AdapterBug`` (a subclass) if it raised an
    exception that is not a deliberate rejection (nothing is written then)."""
    directory = golden_dir(adapter)
    content = render_expected(adapter, read_inputs(directory / f"{case_name}{INPUT_SUFFIX}"))
    target = directory / f"{case_name}{EXPECTED_SUFFIX}"
    partial = target.with_name(target.name + ".tmp")
    partial.write_bytes(content)
    partial.replace(target)
    return target
