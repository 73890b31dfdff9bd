"""`smartico-stream bench --quick --json` as CI runs it: a subprocess that starts the embedded Kafka,
runs every scenario once and prints one JSON report. Checked: every key is there, every scenario
that ran handled every record it was given, the numbers are positive. Nothing here asserts on a
rate or a latency: the machine running the suite decides those.

Also: the CLI registers `bench` (and `lag`) without importing them, so no other command pays for
them at start-up, while `bench --help` still shows every option."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

kafka = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ("raw", "pipeline", "aggregates", "pipeline_postgres", "rabbitmq_raw", "rabbitmq_pipeline")
OVERALL = ("ratio_pipeline_to_raw", "p50_latency_ms", "p99_latency_ms", "peak_rss_mb", "dedup_bytes_per_key")
PIPELINES = ("pipeline", "aggregates", "pipeline_postgres", "rabbitmq_pipeline")
STAGES = ("adapt", "guard_dedup", "apply", "dead_letters", "write")


def bench_command() -> list[str]:
    """``smartico-stream bench``: the installed script, else the CLI module."""
    script = Path(sys.executable).with_name("smartico-stream")
    return [str(script), "bench"] if script.exists() else [sys.executable, "-m", "smartico_stream.cli", "bench"]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    completed = subprocess.run(
        [*bench_command(), "--quick", "--json"],
        capture_output=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stderr = re.sub(r"\x1b\[[0-9;]*m", "", completed.stderr.decode(errors="replace"))
    stdout = completed.stdout.decode()
    try:
        parsed = json.loads(stdout)  # the whole of stdout is the one JSON object
    except json.JSONDecodeError as exc:
        pytest.fail(f"exit code {completed.returncode}; stdout is not one JSON object ({exc}): {stdout[:500]!r}\n"
                    f"stderr ends with:\n{stderr[-3000:]}")
    assert isinstance(parsed, dict)
    problems = {name: s.get("error") for name, s in parsed.get("scenarios", {}).items() if "error" in s}
    assert completed.returncode == 0, (
        f"exit code {completed.returncode} (complete={parsed.get('complete')}, errors={problems}); "
        f"stderr ends with:\n{stderr[-3000:]}"
    )
    return parsed


@kafka
def test_the_report_has_every_scenario_and_every_overall_figure(report: dict[str, Any]) -> None:
    assert report["mode"] == "quick"
    assert set(SCENARIOS) <= set(report["scenarios"]), sorted(report["scenarios"])
    for key in (*OVERALL, "latency", "dedup", "scaling", "targets", "machine", "settings", "duration_s", "complete"):
        assert key in report, f"report lacks {key!r}: {sorted(report)}"
    assert report["complete"] is True
    assert report["duration_s"] > 0
    assert report["machine"]["cpus"] >= 1 and report["machine"]["cpu_model"]
    # The quick run leaves the scaling comparisons out, and says so.
    for name in ("users", "processes"):
        assert isinstance(report["scaling"][name].get("skipped"), str)
    for target in report["targets"].values():
        assert set(target) == {"measured", "met"}


@kafka
def test_every_scenario_that_ran_handled_every_record(report: dict[str, Any]) -> None:
    ran = []
    for name in SCENARIOS:
        scenario = report["scenarios"][name]
        assert "error" not in scenario, f"{name}: {scenario['error']}"
        if "skipped" in scenario:
            # Only the external brokers may be missing, and the reason is given.
            assert name not in ("raw", "pipeline"), f"{name} skipped: {scenario['skipped']}"
            assert isinstance(scenario["skipped"], str) and scenario["skipped"]
            continue
        ran.append(name)
        assert scenario["expected_records"] > 0, name
        assert scenario["records"] == scenario["expected_records"], name
        assert scenario["complete"] is True, name
        assert scenario["events_per_s"] > 0, name
        assert scenario["measured_s"] > 0, name
        assert scenario["peak_rss_mb"] > 0, name
        kinds = scenario["expected"]
        assert kinds["ok"] + kinds["duplicate"] + kinds["malformed"] == scenario["expected_records"], name
        assert kinds["duplicate"] > 0 and kinds["malformed"] > 0, name
        if name in PIPELINES:
            assert scenario["processed"] + scenario["deduplicated"] + scenario["dead_lettered"] == scenario["records"]
            # aggregates runs the same stream with no rules: state, but no actions
            assert scenario["processed"] > 0 and (scenario["actions"] == 0) == (name == "aggregates"), name
            # The checkpoint's observer timed every stage of every committed batch.
            stages = scenario["stage_us_per_record"]
            assert set(stages) == set(STAGES) and all(us >= 0 for us in stages.values()), name
            assert stages["adapt"] > 0 and stages["write"] > 0, name
            # The relay delivered every action the rules emitted before the clock stopped.
            assert scenario["actions_delivered"] == scenario["actions"], name
            assert scenario["outbox_backlog_at_end"] == 0, name
    assert {"raw", "pipeline"} <= set(ran)
    # On Kafka the service's verdicts match the generator's ground truth record for record.
    for name in ("pipeline", "aggregates", "pipeline_postgres"):
        if name in ran:
            assert report["scenarios"][name]["outcomes_match"] is True, name


@kafka
def test_the_overall_figures_are_measured(report: dict[str, Any]) -> None:
    for key in OVERALL:
        assert isinstance(report[key], int | float) and report[key] > 0, f"{key} = {report[key]!r}"
    assert report["p99_latency_ms"] >= report["p50_latency_ms"]
    latency = report["latency"]
    assert latency["complete"] is True and latency["records"] == latency["expected_records"]
    assert latency["samples"] > 0
    # The split of each record's latency adds up: neither part is negative, none exceeds the whole.
    for part in ("before_fetch_ms", "fetch_to_commit_ms"):
        assert 0 <= latency[f"{part}_p50"] <= latency[f"{part}_p99"] <= latency["max_ms"], part
    # Per 10 s of the paced run: the tail, and the embedded cluster's (and producer's) CPU beside it.
    assert latency["p99_ms_per_10s"] and all(0 < p99 <= latency["max_ms"] for p99 in latency["p99_ms_per_10s"])
    cluster = latency["cluster_cpu_cores_per_10s"]
    assert len(cluster) == math.ceil(latency["produced_for_s"] / 10)
    assert cluster[0] is not None and all(cores is None or cores >= 0 for cores in cluster)
    dedup = report["dedup"]
    assert dedup["keys"] > 0 and dedup["tracemalloc"]["bytes_per_key"] > 0


def run_bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*bench_command(), *args], capture_output=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@kafka
def test_only_and_set_run_the_chosen_parts_with_the_settings_the_service_reads_back() -> None:
    completed = run_bench("--quick", "--json", "--only", "pipeline",
                          "--set", "store.sqlite_synchronous=NORMAL", "--set", "kafka.batch_size=500",
                          "--set", "kafka.config.fetch.wait.max.ms=20")
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-3000:]
    report = json.loads(completed.stdout)
    pipeline = report["scenarios"]["pipeline"]
    assert pipeline["complete"] is True and pipeline["records"] == pipeline["expected_records"]
    # Read back from the service's own Settings, not echoed from the command line.
    assert pipeline["settings_applied"] == {
        "store.sqlite_synchronous": "NORMAL", "kafka.batch_size": 500, "kafka.config.fetch.wait.max.ms": 20,
    }
    for name in ("raw", "pipeline_postgres", "rabbitmq_raw", "rabbitmq_pipeline"):
        assert report["scenarios"][name] == {"skipped": "not selected (--only)"}
    assert report["latency"] == report["dedup"] == {"skipped": "not selected (--only)"}
    assert report["settings"]["only"] == ["pipeline"]
    assert "--set store.sqlite_synchronous=NORMAL" in report["command"] and "--only pipeline" in report["command"]


@kafka
def test_latency_rate_paces_the_latency_part_without_the_pipeline_part() -> None:
    completed = run_bench("--quick", "--json", "--only", "latency", "--latency-rate", "800")
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-3000:]
    report = json.loads(completed.stdout)
    assert report["scenarios"]["pipeline"] == {"skipped": "not selected (--only)"}
    latency = report["latency"]
    assert latency["complete"] is True and latency["records"] == latency["expected_records"] > 0
    assert latency["target_rate_per_s"] == 800 and latency["samples"] > 0
    assert report["settings"]["latency_rate"] == 800
    assert "--latency-rate 800" in report["command"] and "--only latency" in report["command"]


@pytest.mark.parametrize(("args", "message"), [
    (("--only", "pipelines"), "unknown part(s) pipelines; choose from raw, pipeline,"),
    (("--set", "store.sqlite_synchronous=OFF"),
     "store.sqlite_synchronous: Input should be 'FULL', 'NORMAL' or 'EXTRA'"),
    (("--set", "batch_size"), "expected section.key=value"),
    (("--latency-rate", "0"), "Invalid value for '--latency-rate': Input should be greater than or equal to 1"),
])
def test_a_bad_only_or_set_is_refused_before_anything_starts(args: tuple[str, ...], message: str) -> None:
    completed = run_bench("--quick", *args, timeout=60)
    assert completed.returncode == 2
    assert message in _words(completed.stderr.decode())


def _words(text: str) -> str:
    """Help text as one line of words: rich's box drawing and wrapping removed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", re.sub(r"\x1b\[[0-9;]*m", "", text)).split())


def test_the_module_takes_the_same_options() -> None:
    completed = subprocess.run([sys.executable, "-m", "smartico_stream.bench", "--only", "pipelines"],
                               capture_output=True, timeout=60, cwd=REPO)
    assert completed.returncode == 2
    assert "unknown part(s) pipelines; choose from raw, pipeline," in _words(completed.stderr.decode())


def test_a_profile_without_pyinstrument_is_refused_naming_the_option(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyinstrument") is not None:
        pytest.skip("pyinstrument is installed here")
    completed = run_bench("--quick", "--profile", str(tmp_path / "profile.txt"), timeout=60)
    assert completed.returncode == 2
    assert "Invalid value for --profile: needs pyinstrument" in _words(completed.stderr.decode())


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_the_cli_starts_without_importing_the_bench_or_the_lag_command(argv: list[str]) -> None:
    """Start-up cost: neither importing the CLI nor showing a help page loads the bench package or
    the lag command (and the Kafka and Prometheus clients behind it)."""
    lazy = ("smartico_stream.bench", "smartico_stream.ops.lag", "prometheus_client")
    code = (
        "import atexit, sys\n"
        f"lazy = {lazy!r}\n"
        "def loaded():\n"
        "    return sorted(m for m in sys.modules if m.startswith(lazy))\n"
        "import smartico_stream.cli\n"
        "sys.stderr.write(f'after import: {loaded()}\\n')\n"
        "atexit.register(lambda: sys.stderr.write(f'after help: {loaded()}\\n'))\n"
        f"sys.argv = ['smartico-stream', *{argv!r}]\n"
        "smartico_stream.cli.main()\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, cwd=REPO)
    stderr = completed.stderr.decode()
    assert completed.returncode == 0, stderr
    assert "after import: []" in stderr and "after help: []" in stderr, stderr
    assert "Usage: smartico-stream" in completed.stdout.decode()


def test_the_listing_shows_the_lazy_commands_own_summaries() -> None:
    """`smartico-stream --help` lists `bench` and `lag` from cli.py, without importing them: the
    summaries there are the first paragraph of each command's own docstring."""
    from typer.main import get_command

    from smartico_stream.bench.command import bench_command as bench
    from smartico_stream.cli import app
    from smartico_stream.ops.lag import lag_command as lag

    group = get_command(app)
    commands = group.commands
    for name, real in (("bench", bench), ("lag", lag)):
        summary = (inspect.getdoc(real) or "").split("\n\n")[0]
        assert commands[name].help == summary, name


def test_bench_help_shows_every_option_with_its_description() -> None:
    import typer
    from typer.main import get_command

    from smartico_stream.bench.command import bench_command as bench

    single = typer.Typer(add_completion=False)
    single.command()(bench)
    options = [param for param in get_command(single).params if param.name != "help"]
    # Wide enough that rich wraps no description mid-word (or cuts one with an ellipsis).
    completed = subprocess.run([*bench_command(), "--help"], capture_output=True, timeout=60, cwd=REPO,
                               env={**os.environ, "COLUMNS": "250"})
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    shown = _words(completed.stdout.decode())
    assert len(options) == 8
    for option in options:
        assert option.opts[0] in shown, option.opts
        assert _words(getattr(option, "help", None) or "") in shown, option.opts


@kafka
def test_the_audience_part_counts_stored_users_as_rules_audience_does() -> None:
    completed = run_bench("--quick", "--json", "--only", "audience")
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-3000:]
    report = json.loads(completed.stdout)
    audience = report["audience"]
    assert audience["complete"] is True and audience["matches_brute_force"] is True
    assert audience["users"] == 100_000 and audience["count_s"] > 0 and audience["audience"] > 0
    assert set(audience["by_brand"]) == {"brand-eu", "brand-latam"}
    assert report["targets"]["audience_1m_users_s <= 10"] == {"measured": None, "met": None}  # full run only
    assert report["scenarios"]["pipeline"] == report["dedup"] == {"skipped": "not selected (--only)"}
