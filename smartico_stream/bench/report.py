"""The report: its shape (every key always present), the overall figures, targets and notes, and
the table the command prints."""

from __future__ import annotations

from typing import Any

from smartico_stream.bench.profiles import LATENCY_SLICE_S, SCENARIOS, Profile


def skeleton(profile: Profile) -> dict[str, Any]:
    """The report before anything ran: every key present, every part ``{"skipped": ...}``."""
    return {
        "mode": profile.mode,
        "command": "smartico-stream bench" + (" --quick" if profile.mode == "quick" else "") + " --json",
        "duration_s": None,
        "complete": False,
        "machine": {},
        "scenarios": {name: {"skipped": "not run"} for name in SCENARIOS},
        "ratio_pipeline_to_raw": None,
        "p50_latency_ms": None,
        "p99_latency_ms": None,
        "latency": {"skipped": "not run"},
        "peak_rss_mb": None,
        "dedup_bytes_per_key": None,
        "dedup": {"skipped": "not run"},
        "audience": {"skipped": "not run"},
        "scaling": {"users": {"skipped": "full run only"}, "processes": {"skipped": "full run only"}},
        "targets": {},
        "settings": {},
        "notes": [],
    }


def latency_report(measured: dict[str, Any]) -> dict[str, Any]:
    """The report's ``latency`` from the paced pipeline scenario (its error or skip as it is)."""
    if "latency" not in measured:
        return measured
    latency = dict(measured["latency"])
    latency.update(
        wall_s=measured.get("wall_s"),
        load_avg_1m=measured.get("load_avg_1m"),
        peak_rss_mb=measured.get("peak_rss_mb"),
        cpu_cores_used=measured.get("cpu_cores_used"),  # the service's, at this rate
        records=measured.get("records"), expected_records=measured.get("expected_records"),
        complete=measured.get("complete"),
        method="per record: Kafka CreateTime (ms, stamped by the producer) to the wall clock when the store "
               "transaction holding the record returned (service.store.commit wrapped); producer linger.ms=1; "
               "records produced during the warm-up are not counted",
    )
    return latency


def overall(report: dict[str, Any], profile: Profile) -> None:
    """Fill the overall figures, ``complete``, the targets and the notes of ``report`` from its parts."""
    scenarios = report["scenarios"]
    raw, pipeline = scenarios["raw"].get("events_per_s"), scenarios["pipeline"].get("events_per_s")
    report["ratio_pipeline_to_raw"] = round(pipeline / raw, 4) if raw and pipeline else None
    report["peak_rss_mb"] = scenarios["pipeline"].get("peak_rss_mb")
    ran = [s for s in scenarios.values() if "skipped" not in s]
    scaling = report["scaling"]
    for group in scaling.values():
        for key in ("users_100k", "users_1m", "one_process", "two_processes"):
            if isinstance(group, dict) and isinstance(group.get(key), dict):
                ran.append(group[key])
    if isinstance(report["latency"], dict) and "skipped" not in report["latency"]:
        ran.append(report["latency"])
    audience = report["audience"] if isinstance(report["audience"], dict) else {}
    if "skipped" not in audience:
        ran.append(audience)
    report["complete"] = bool(ran) and all(s.get("complete") for s in ran) and "error" not in report["dedup"]
    users = scaling["users"] if isinstance(scaling["users"], dict) else {}
    processes = scaling["processes"] if isinstance(scaling["processes"], dict) else {}
    rabbit_raw = scenarios["rabbitmq_raw"].get("events_per_s")
    rabbit_pipeline = scenarios["rabbitmq_pipeline"].get("events_per_s")
    targets = {
        "pipeline_events_per_s >= 100000": pipeline,
        "aggregates_events_per_s >= 200000": scenarios["aggregates"].get("events_per_s"),
        "pipeline_postgres_events_per_s >= 50000": scenarios["pipeline_postgres"].get("events_per_s"),
        "rabbitmq_pipeline >= 0.8 x rabbitmq_raw": round(rabbit_pipeline / rabbit_raw, 3)
        if rabbit_raw and rabbit_pipeline else None,
        "p99_latency_ms <= 250": report["p99_latency_ms"],
        "dedup_bytes_per_key <= 64": report["dedup_bytes_per_key"],
        "users_1m_events_per_s >= 0.8 x users_100k": users.get("events_per_s_ratio_1m_to_100k"),
        "users_1m_peak_rss <= 1.2 x users_100k": users.get("peak_rss_ratio_1m_to_100k"),
        "two_processes >= 1.7 x one": processes.get("speedup"),
        # Judged on the full run's 1M users only (--quick counts fewer).
        "audience_1m_users_s <= 10": audience.get("count_s") if audience.get("users") == 1_000_000 else None,
        "replica_pipeline >= 0.5 x its raw read": scenarios["replica_pipeline"].get("ratio_to_raw"),
        "replica_pipeline_mysql >= 0.5 x its raw read": scenarios["replica_pipeline_mysql"].get("ratio_to_raw"),
    }
    checks = {
        "pipeline_events_per_s >= 100000": lambda v: v >= 100_000,
        "aggregates_events_per_s >= 200000": lambda v: v >= 200_000,
        "pipeline_postgres_events_per_s >= 50000": lambda v: v >= 50_000,
        "rabbitmq_pipeline >= 0.8 x rabbitmq_raw": lambda v: v >= 0.8,
        "p99_latency_ms <= 250": lambda v: v <= 250,
        "dedup_bytes_per_key <= 64": lambda v: v <= 64,
        "users_1m_events_per_s >= 0.8 x users_100k": lambda v: v >= 0.8,
        "users_1m_peak_rss <= 1.2 x users_100k": lambda v: v <= 1.2,
        "two_processes >= 1.7 x one": lambda v: v >= 1.7,
        "audience_1m_users_s <= 10": lambda v: v <= 10,
        "replica_pipeline >= 0.5 x its raw read": lambda v: v >= 0.5,
        "replica_pipeline_mysql >= 0.5 x its raw read": lambda v: v >= 0.5,
    }
    report["targets"] = {
        name: {"measured": value, "met": None if value is None else bool(checks[name](value))}
        for name, value in targets.items()
    }
    notes: list[str] = report["notes"]
    main = scenarios["pipeline"]
    if main.get("distinct_users") is not None and main["distinct_users"] < profile.users:
        notes.append(
            f"the pipeline scenario's {main['records']:,} records touched {main['distinct_users']:,} distinct users of "
            f"the {profile.users:,} in StreamSpec (the generator registers at most ~0.09 new users per record and "
            "the run is capped in time); scaling.users respreads the records over 100k and 1M users"
        )
    if main.get("actions") and main.get("records"):
        notes.append(f"the 50 rules emitted {main['actions'] / main['records']:.2f} actions per record, each written "
                     "to the outbox, read back by the relay and appended to the JSONL sink")
    cpus = report["machine"].get("cpus_available") or 1
    for name, scenario in [*scenarios.items(), ("latency", report["latency"])]:
        load = scenario.get("load_avg_1m") if isinstance(scenario, dict) else None
        if load and max(v or 0 for v in load.values()) > cpus:
            notes.append(f"{name}: the machine was busy (1-minute load average up to "
                         f"{max(v or 0 for v in load.values())} on {cpus} cores): other work shared the cores")


def _series(values: list[float | None] | None, digits: int) -> str:
    return " / ".join(_fmt(v, digits) for v in values or []) or "-"


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def scenario_line(name: str, scenario: dict[str, Any]) -> str:
    """One progress line for a scenario's result."""
    if "skipped" in scenario:
        return f"  {name}: skipped ({scenario['skipped']})"
    if "error" in scenario:
        return f"  {name}: ERROR {scenario['error'].splitlines()[0]}"
    return (f"  {name}: {_fmt(scenario.get('records'))}/{_fmt(scenario.get('expected_records'))} records, "
            f"{_fmt(scenario.get('events_per_s'))} events/s, cpu {_fmt(scenario.get('cpu_cores_used'), 2)} cores, "
            f"peak RSS {_fmt(scenario.get('peak_rss_mb'), 0)} MB")


def render_table(report: dict[str, Any]) -> str:
    """The report as the table ``smartico-stream bench`` prints without ``--json``."""
    rows = [("scenario", "records", "expected", "users", "events/s", "cores", "RSS MB", "")]
    entries: list[tuple[str, dict[str, Any]]] = list(report["scenarios"].items())
    users, processes = report["scaling"]["users"], report["scaling"]["processes"]
    for key in ("users_100k", "users_1m"):
        if isinstance(users.get(key), dict):
            entries.append((f"scaling {key}", users[key]))
    for key in ("one_process", "two_processes"):
        if isinstance(processes.get(key), dict):
            entries.append((f"scaling {key}", processes[key]))
    for name, scenario in entries:
        if "skipped" in scenario or "error" in scenario:
            reason = scenario.get("skipped") or scenario.get("error", "")
            verdict = "skipped: " if "skipped" in scenario else "ERROR: "
            rows.append((name, "", "", "", "", "", "", verdict + reason.splitlines()[0][:70]))
            continue
        rss = scenario.get("peak_rss_mb") or max(scenario.get("peak_rss_mb_per_member") or [0]) or None
        rows.append((name, _fmt(scenario.get("records")), _fmt(scenario.get("expected_records")),
                     _fmt(scenario.get("distinct_users")), _fmt(scenario.get("events_per_s")),
                     _fmt(scenario.get("cpu_cores_used"), 2), _fmt(rss, 0),
                     "" if scenario.get("complete") else "INCOMPLETE"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) if 0 < i < 7 else cell.ljust(width) for i, (cell, width) in
                       enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    latency = report["latency"]
    lines += [
        "",
        f"ratio pipeline/raw        {_fmt(report['ratio_pipeline_to_raw'], 4)}",
        f"latency p50 / p99         {_fmt(report['p50_latency_ms'], 1)} / {_fmt(report['p99_latency_ms'], 1)} ms"
        + (f"  (at {_fmt(latency.get('target_rate_per_s'))} records/s, {_fmt(latency.get('samples'))} records)"
           if "samples" in latency else f"  ({latency.get('skipped') or latency.get('error', '')})"),
        *([(f"  batches of {_fmt(latency.get('batch_records_mean'), 0)} records on average, "
             f"{_fmt(latency.get('batch_fetch_to_commit_ms_p50'), 1)} ms from fetch to commit (median)"),
           (f"  p99 split: {_fmt(latency.get('before_fetch_ms_p99'), 1)} ms before the fetch, "
            f"{_fmt(latency.get('fetch_to_commit_ms_p99'), 1)} ms fetch to commit"),
           (f"  per {LATENCY_SLICE_S} s: p99 {_series(latency.get(f'p99_ms_per_{LATENCY_SLICE_S}s'), 0)} ms; "
            "embedded cluster + producer "
            f"{_series(latency.get(f'cluster_cpu_cores_per_{LATENCY_SLICE_S}s'), 2)} cores")]
          if latency.get("batches") else []),
        f"peak RSS (pipeline)       {_fmt(report['peak_rss_mb'], 0)} MB",
        f"dedup bytes per key       {_fmt(report['dedup_bytes_per_key'], 1)}"
        + (f"  ({_fmt(report['dedup'].get('keys'))} keys; tracemalloc: "
           f"{_fmt(report['dedup']['tracemalloc']['bytes_per_key'], 1)})" if "tracemalloc" in report["dedup"] else ""),
    ]
    if "events_per_s_ratio_1m_to_100k" in users:
        lines.append(f"1M / 100k users           events/s x{_fmt(users['events_per_s_ratio_1m_to_100k'], 3)}, "
                     f"peak RSS x{_fmt(users.get('peak_rss_ratio_1m_to_100k'), 3)}")
    if "speedup" in processes:
        lines.append(f"two processes / one       x{_fmt(processes['speedup'], 3)} ({processes.get('store')} store)")
    lines += ["", "targets:"]
    for name, target in report["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        lines.append(f"  {name:<44} {_fmt(target['measured'], 3):>14}  {verdict}")
    if report["notes"]:
        lines += ["", "notes:", *(f"  - {note}" for note in report["notes"])]
    machine_info = report["machine"]
    lines += ["", f"{report['mode']} run in {_fmt(report['duration_s'], 1)} s on {machine_info.get('cpus')} x "
                  f"{machine_info.get('cpu_model')}, {machine_info.get('ram_gb')} GB RAM; "
                  f"complete: {report['complete']}"]
    return "\n".join(lines)
