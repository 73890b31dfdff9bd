"""Start-up failures through the real command, against the real PostgreSQL and RabbitMQ: one line
naming the setting and the resource, exit 3 for an unreachable dependency (2 when it refuses the
configuration: login, database), no traceback; connecting is bounded by a timeout named in the
message; the RabbitMQ source retries an unreachable broker with one log line per attempt."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from smartico_stream.config import EXIT_CONFIG, EXIT_UNREACHABLE
from smartico_stream.pii.keys import generate_key_ring, key_ring_to_json
from tests.cli.cli_run import assert_clean_failure, clean_env, cli, write_config
from tests.support.common import CLI, free_port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


def _run(tmp_path: Path, overrides: dict[str, object], env: dict[str, str] | None = None,
         timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path, overrides)
    return cli(["run", "-c", str(config)], env=env, cwd=tmp_path, timeout_s=timeout_s)


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


# -- PostgreSQL ---------------------------------------------------------------------------------------


def test_postgres_refused_names_the_setting_and_server(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = _run(tmp_path, {"store": {"url": f"postgresql://postgres:secret-pw@127.0.0.1:{port}/test"}})
    assert_clean_failure(done, EXIT_UNREACHABLE, f"store.url: PostgreSQL at 127.0.0.1:{port}/test is unreachable",
                         "connection refused")
    assert "secret-pw" not in done.stderr


def test_postgres_unknown_database_is_a_configuration_error(tmp_path: Path, postgres_dsn: str) -> None:
    url = _with_database(postgres_dsn, "no_such_database_c15")
    done = _run(tmp_path, {"store": {"url": url}})
    assert_clean_failure(done, EXIT_CONFIG, "store.url: PostgreSQL at", "/no_such_database_c15: the database does "
                         "not exist")


def test_postgres_that_never_answers_times_out_naming_the_timeout(tmp_path: Path, silent_port: int) -> None:
    started = time.monotonic()
    done = _run(tmp_path, {"store": {"url": f"postgresql://postgres@127.0.0.1:{silent_port}/test",
                                     "connect_timeout_s": 1}})
    elapsed = time.monotonic() - started
    assert_clean_failure(done, EXIT_UNREACHABLE,
                         f"store.url: PostgreSQL at 127.0.0.1:{silent_port}/test did not answer within 1 s "
                         "(store.connect_timeout_s)")
    assert elapsed < 15, elapsed


def test_an_unreachable_pii_store_names_pii_store_url(tmp_path: Path, silent_port: int) -> None:
    ring = key_ring_to_json(generate_key_ring("k1")).decode()
    done = _run(tmp_path, {"pii": {"store_url": f"postgresql://postgres@127.0.0.1:{silent_port}/test",
                                   "store_connect_timeout_s": 1}},
                env={"SMARTICO_STREAM_PII_KEYS": ring})
    assert_clean_failure(done, EXIT_UNREACHABLE, "pii.store_url: PostgreSQL at", "did not answer within 1 s",
                         "(pii.store_connect_timeout_s)")
    assert ring not in done.stderr


# -- SQLite and the metrics port ---------------------------------------------------------------------


def test_a_sqlite_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    done = _run(tmp_path, {"store": {"url": f"sqlite:///{blocker / 'sub' / 'state.db'}"}})
    assert_clean_failure(done, EXIT_CONFIG, "store.url: cannot open the SQLite database", "Not a directory")


def test_the_metrics_port_in_use_names_host_port_and_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = int(taken.getsockname()[1])
        done = _run(tmp_path, {"metrics": {"enabled": True, "host": "127.0.0.1", "port": port}})
    assert_clean_failure(done, EXIT_CONFIG, f"metrics.port: cannot listen on 127.0.0.1:{port}: address already in use")


# -- RabbitMQ -----------------------------------------------------------------------------------------


def _rabbit(url: str) -> dict[str, object]:
    return {"source": "rabbitmq", "rabbitmq": {"url": url}}


@pytest.mark.rabbitmq
def test_rabbitmq_bad_credentials_are_a_configuration_error(tmp_path: Path, rabbitmq: str) -> None:
    parts = urlsplit(rabbitmq)
    url = urlunsplit(parts._replace(netloc=f"guest:wrong-pw@{parts.hostname}:{parts.port or 5672}"))
    done = _run(tmp_path, _rabbit(url))
    assert_clean_failure(done, EXIT_CONFIG, "rabbitmq.url: RabbitMQ at", "refused the login (ACCESS_REFUSED)")
    assert "wrong-pw" not in done.stderr


@pytest.mark.rabbitmq
def test_rabbitmq_unknown_vhost_is_a_configuration_error(tmp_path: Path, rabbitmq: str) -> None:
    url = urlunsplit(urlsplit(rabbitmq)._replace(path="/no-such-vhost-c15"))
    done = _run(tmp_path, _rabbit(url))
    assert_clean_failure(done, EXIT_CONFIG, "rabbitmq.url: RabbitMQ at", "check the virtual host")


def test_an_unreachable_rabbitmq_is_retried_with_one_line_per_attempt(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, _rabbit(f"amqp://guest:guest@127.0.0.1:{port}/"))
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        process = subprocess.Popen([*CLI, "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=err,
                                   cwd=tmp_path, env=clean_env())
    try:
        deadline = time.monotonic() + 20
        attempts: list[dict[str, object]] = []
        while time.monotonic() < deadline and len(attempts) < 2 and process.poll() is None:
            time.sleep(0.2)
            attempts = [
                json.loads(line) for line in stderr.read_text().splitlines()
                if line.startswith("{") and "RabbitMQ unreachable; retrying" in line
            ]
        assert process.poll() is None, stderr.read_text()[-3000:]  # still retrying, not crashed
        assert [a["attempt"] for a in attempts[:2]] == [1, 2], stderr.read_text()[-3000:]
        assert [a["retry_in_s"] for a in attempts[:2]] == [1.0, 2.0]
        assert attempts[0]["broker"] == f"127.0.0.1:{port}"
        assert "guest:guest" not in stderr.read_text()
        process.send_signal(signal.SIGTERM)  # a signal stops the retrying start at once
        assert process.wait(timeout=10) == 0, stderr.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = stderr.read_text()
    assert "Traceback" not in text
    assert len(text.splitlines()) < 20, text


# -- lag ------------------------------------------------------------------------------------------------


@pytest.mark.rabbitmq
def test_lag_with_bad_rabbitmq_credentials_exits_2(tmp_path: Path, rabbitmq: str) -> None:
    parts = urlsplit(rabbitmq)
    url = urlunsplit(parts._replace(netloc=f"guest:wrong-pw@{parts.hostname}:{parts.port or 5672}"))
    config = write_config(tmp_path, _rabbit(url))
    done = cli(["lag", "-c", str(config), "--timeout", "3"], cwd=tmp_path)
    assert_clean_failure(done, EXIT_CONFIG, "rabbitmq.url: RabbitMQ at", "ACCESS_REFUSED")


def test_lag_with_rabbitmq_refused_exits_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, _rabbit(f"amqp://guest:guest@127.0.0.1:{free_port()}/"))
    done = cli(["lag", "-c", str(config), "--timeout", "3"], cwd=tmp_path)
    assert_clean_failure(done, EXIT_UNREACHABLE, "rabbitmq.url: RabbitMQ at", "is unreachable")


def test_lag_with_a_property_librdkafka_refuses_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"kafka": {"config": {"bootstrap.servers": "127.0.0.1:1", "group.id": "g",
                                                          "socket.timeout.mss": 5}}})
    done = cli(["lag", "-c", str(config), "--timeout", "2"], cwd=tmp_path)
    assert_clean_failure(done, EXIT_CONFIG, "kafka.config: librdkafka refuses it", "socket.timeout.mss")


def test_lag_with_an_unknown_environment_variable_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = cli(["lag", "-c", str(config)], env={"SMARTICO_STREAM_KAFKA_BATCH_SIZE": "5"}, cwd=tmp_path)
    assert_clean_failure(done, EXIT_CONFIG, "SMARTICO_STREAM_KAFKA_BATCH_SIZE: unknown environment variable; "
                         "did you mean SMARTICO_STREAM_KAFKA__BATCH_SIZE?")


# -- --debug --------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback_of_an_unexpected_error(tmp_path: Path) -> None:
    """`history` on a SQLite file that is not a database fails in the driver: one line without
    --debug, the traceback with it."""
    bogus = tmp_path / "not-a-db.db"
    bogus.write_bytes(b"definitely not sqlite" * 100)
    plain = cli(["history", "--store", f"sqlite:///{bogus}"], cwd=tmp_path)
    assert plain.returncode == 1, plain.stderr
    assert "Traceback" not in plain.stderr
    assert "DatabaseError" in plain.stderr and "--debug" in plain.stderr
    assert len(plain.stderr.splitlines()) == 1, plain.stderr
    debug = cli(["--debug", "history", "--store", f"sqlite:///{bogus}"], cwd=tmp_path)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
