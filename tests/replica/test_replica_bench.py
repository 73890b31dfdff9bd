"""`smartico-stream bench --quick --only replica_pipeline --only replica_pipeline_mysql`: on each
server, the rows written to the views are all read by the ceiling (the dialect's connection alone)
and all handled by the service through to the store commit; both figures and their ratio are
reported, with the target (half the ceiling)."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from tests.support.common import CLI

pytestmark = [pytest.mark.timeout(600)]


def test_replica_pipeline_bench_on_both_servers():
    done = subprocess.run([*CLI, "bench", "--quick", "--only", "replica_pipeline", "--only",
                           "replica_pipeline_mysql", "--json"], capture_output=True, timeout=580, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = orjson.loads(done.stdout)
    for name, database in (("replica_pipeline", "postgresql"), ("replica_pipeline_mysql", "mysql")):
        scenario = report["scenarios"][name]
        assert scenario["database"] == database
        assert scenario["complete"] and scenario["records"] == scenario["expected_records"] > 10_000
        assert scenario["raw"]["complete"] and scenario["raw"]["records"] == scenario["records"]
        assert scenario["events_per_s"] > 0 and scenario["raw"]["events_per_s"] > 0
        assert scenario["ratio_to_raw"] == round(scenario["events_per_s"] / scenario["raw"]["events_per_s"], 3)
        assert scenario["dead_lettered"] < scenario["records"] * 0.05  # the rows are what the models accept
        target = report["targets"][f"{name} >= 0.5 x its raw read"]
        assert target["measured"] == scenario["ratio_to_raw"]
    assert report["scenarios"]["pipeline"] == {"skipped": "not selected (--only)"}
