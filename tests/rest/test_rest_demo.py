"""``smartico-stream demo --transport rest --json``: the synthetic stream sent over HTTP to the
service's own API, one JSON summary whose numbers add up against the generator's ground truth."""

from __future__ import annotations

import json

from tests.cli.cli_run import cli

EVENTS, USERS = 1200, 150


def test_rest_demo_summary_adds_up():
    done = cli(["demo", "--transport", "rest", "--events", str(EVENTS), "--users", str(USERS), "--json",
                "--metrics-port", "0"], timeout_s=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    expected = summary["expected"]
    assert summary["produced"] == summary["consumed"] == EVENTS
    assert summary["processed"] + summary["deduplicated"] + summary["dead_lettered"] == EVENTS
    assert summary["deduplicated"] == expected["duplicate"]
    # A record without a Kafka key is no defect here: the user id comes from the body.
    keyless = expected.get("malformed:null_key", 0)
    assert summary["dead_lettered"] == expected["malformed"] - keyless
    assert summary["processed"] == expected["ok"] + keyless
    assert summary["actions"] > 0 and summary["actions_delivered"] == summary["actions"]
