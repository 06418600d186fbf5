"""A real PostgreSQL server for the tests: Debian's binaries, a temp data folder, 127.0.0.1.

The tests run as root, and PostgreSQL refuses to run as root: the server runs as the
``postgres`` user (the data folder is its own). A watchdog process stops the server if the
test process dies without its finalizer (SIGKILL), so no server outlives a test session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from support import free_port

USER = "candleray"
PASSWORD = "candleray-test-pw"
# free_port() only says a port was free a moment ago: a second test run on the machine may
# take it before the server binds it, so a start that fails to bind tries another port
START_TRIES = 5
BIND_FAILED = ("could not bind", "Address already in use")


def find_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` with initdb and pg_ctl, or None."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()
    ]
    return max(found, key=lambda p: int(p.parent.name), default=None) if found else None


@dataclass
class PgServer:
    bin: Path
    root: Path
    port: int
    watchdog: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, **_as_postgres())

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=USER,
            password=PASSWORD,
            dbname="postgres",
            autocommit=True,
        ) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already down
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate")
        if self.watchdog is not None:
            self.watchdog.kill()
            self.watchdog.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres() -> dict:
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def start() -> PgServer:
    """initdb + pg_ctl start on a free port; the superuser ``candleray`` logs in by password."""
    pg_bin = find_bin()
    assert pg_bin is not None, "find_bin() first"
    # not below pytest's temp folder: that one is root's (0700) and postgres must reach it
    root = Path(tempfile.mkdtemp(prefix="candleray-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    server = PgServer(pg_bin, root, 0)
    try:
        server._run(
            str(pg_bin / "initdb"),
            "-D",
            str(server.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr!r}") from exc
    # the watchdog first: from here on, a dead test process takes the server with it
    server.watchdog = subprocess.Popen(
        [
            "sh",
            "-c",
            f"while [ -d /proc/{os.getpid()} ]; do sleep 2; done; "
            f'"{pg_bin}/pg_ctl" -D "{server.data}" stop -m immediate; rm -rf "{root}"',
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **_as_postgres(),
    )
    _start_on_a_free_port(server)
    deadline = time.monotonic() + 60
    while True:  # pg_ctl -w waits for the socket; a login proves the password works
        try:
            server.create_database("candleray")
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)


def _start_on_a_free_port(server: PgServer) -> None:
    log_path = server.root / "server.log"
    for attempt in range(START_TRIES):
        server.port = free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        seen = log_path.stat().st_size if log_path.exists() else 0  # pg_ctl -l appends
        try:
            server._run(
                str(server.bin / "pg_ctl"),
                "-D",
                str(server.data),
                "-l",
                str(log_path),
                "-o",
                opts,
                "-w",
                "-t",
                "120",
                "start",
            )
            return
        except subprocess.CalledProcessError as exc:
            log = log_path.read_bytes()[seen:].decode(errors="replace") if log_path.exists() else ""
            if attempt + 1 < START_TRIES and any(m in log for m in BIND_FAILED):
                continue
            server.stop()
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr!r}\n{log[-3000:]}") from exc
