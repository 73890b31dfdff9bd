"""A database server of the test's own, so that it can be restarted mid-poll without disturbing
the shared servers other tests (and other people) use: a PostgreSQL cluster made with ``initdb``
or a MariaDB made with ``mariadb-install-db``, in a temporary directory, on a free loopback port,
run as the ``postgres`` / ``mysql`` system user. Stopped and removed afterwards.

``server.restart()`` is a real restart of the server process (``pg_ctl restart -m fast`` / a
SIGTERM and a new ``mariadbd``): every session ends, the port refuses connections meanwhile.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as(user: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    runner = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    return subprocess.run([*runner, *command], capture_output=True, text=True, timeout=timeout, check=False)


def _wait_port(port: int, up: bool, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            listening = sock.connect_ex(("127.0.0.1", port)) == 0
        if listening == up:
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not {'open' if up else 'close'} within {timeout_s} s")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust authentication, database ``postgres``)."""

    kind = "postgresql"

    def __init__(self, root: Path) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not binaries:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self._bin = Path(binaries[-1])
        self._data = root / "pgdata"
        self._root = root
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if not self._data.exists():
            done = _as("postgres", str(self._bin / "initdb"), "-D", str(self._data), "-U", "postgres",
                       "-A", "trust", "--no-sync")
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stderr}")
        options = f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = _as("postgres", str(self._bin / "pg_ctl"), "-D", str(self._data), "-o", options, "-w",
                   "-l", str(self._root / "pg.log"), "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr}{(self._root / 'pg.log').read_text()}")
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        _as("postgres", str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "fast", "-w", "stop")
        _wait_port(self.port, up=False)


class PrivateMariaDb:
    """A throwaway MariaDB server (root without password, database ``test``)."""

    kind = "mysql"

    def __init__(self, root: Path) -> None:
        self._data = root / "mydata"
        self._root = root
        self.port = _free_port()
        self.dsn = f"mysql://root@127.0.0.1:{self.port}/test"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self._data.exists():
            done = _as("mysql", "mariadb-install-db", f"--datadir={self._data}",
                       "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
                       timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"mariadb-install-db failed: {done.stderr}")
        runner = ["runuser", "-u", "mysql", "--"] if os.geteuid() == 0 else []
        self._process = subprocess.Popen(
            [*runner, "mariadbd", "--no-defaults", f"--datadir={self._data}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self._root / 'my.sock'}", f"--pid-file={self._root / 'my.pid'}",
             "--skip-name-resolve", "--innodb-buffer-pool-size=16M", "--skip-log-bin",
             f"--log-error={self._root / 'my.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        pid_file = self._root / "my.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        if self._process is not None:
            self._process.wait(timeout=60)
            self._process = None
        _wait_port(self.port, up=False)


@contextlib.contextmanager
def private_server(kind: str) -> Iterator[PrivatePostgres | PrivateMariaDb]:
    """A running server of ``kind`` (``postgresql`` or ``mysql``) of the caller's own."""
    root = Path(tempfile.mkdtemp(prefix=f"smartico-{kind}-"))
    os.chmod(root, 0o777)  # noqa: S103 - the server runs as its own system user in this scratch dir
    server: PrivatePostgres | PrivateMariaDb = PrivatePostgres(root) if kind == "postgresql" else PrivateMariaDb(root)
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
