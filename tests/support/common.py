"""Where things are, and how to start the command under test, for tests in any folder."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_RULES = REPO / "smartico_stream" / "demo" / "rules.yaml"

_SCRIPT = Path(sys.executable).parent / "smartico-stream"  # the console script next to this interpreter
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "smartico_stream.cli"]

# Business timestamps in the past (2023-11-14T22:13:20Z, a Tuesday): the canonical models reject
# future event times.
BASE_MS = 1_700_000_000_000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server the test starts and must address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
