"""``smartico-stream run`` with crash points, for the crash tests only.

    python -m tests.support.failpoint_run --config FILE --failpoints after_store_commit=3

Builds the Service exactly as the ``run`` command does (same settings loading, logging, signal
handling) and hands it the failpoints. This is the only way to set them: the service reads none
from its configuration or environment. Run it from the repository root (``tests`` must import).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import uvloop

from smartico_stream.cli import _until_signalled
from smartico_stream.config import ConfigError, load_settings
from smartico_stream.failpoints import Failpoints
from smartico_stream.observability.logging import configure_logging
from smartico_stream.service import Service


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``--config`` and ``--failpoints``, then run the service until SIGTERM (or a failpoint)."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.failpoint_run", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="YAML config file, as for `run`")
    parser.add_argument("--failpoints", required=True, help="NAME=COUNT[,NAME=COUNT...]")
    args = parser.parse_args(argv)
    try:
        failpoints = Failpoints.parse(args.failpoints)
    except ValueError as exc:
        parser.error(f"--failpoints: {exc}")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        parser.exit(2, f"{exc}\n")
    configure_logging(settings.logging.level, settings.logging.format)
    service = Service(settings, failpoints=failpoints)
    uvloop.run(_until_signalled(service.run))


if __name__ == "__main__":
    main()
