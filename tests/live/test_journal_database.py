"""run.database_url for journals: one PostgreSQL for every host's journal; unreachable servers
and refused passwords are clear errors naming the setting; older journal files still resume."""

from __future__ import annotations

import sqlite3
import threading
import uuid

import pytest
from live_support import FakePredictor, settings, synthetic
from support import free_port

from actors.hosts.host import host_journal
from pipelines.errors import DatabaseError
from pipelines.live import Journal, Session, iter_candles, tick


@pytest.mark.parametrize("problem", ["unreachable", "password", "database"])
def test_a_host_that_cannot_reach_its_database_says_so_at_start(problem, postgres, make_cfg):
    """Not a hang, not a Ray traceback: the host's journal does not open, and the error names
    run.database_url and what to check; the password never shows."""
    url = {
        "unreachable": f"postgresql+psycopg://candleray:pw@127.0.0.1:{free_port()}/candleray",
        "password": postgres.url("candleray", password="wrong-pw"),
        "database": postgres.url("no_such_db"),
    }[problem]
    cfg = make_cfg(f"run.database_url={url}")
    with pytest.raises(DatabaseError, match=r"run\.database_url") as err:
        host_journal(cfg, 0)
    msg = str(err.value)
    assert "wrong-pw" not in msg and "candleray-test-pw" not in msg
    assert {"unreachable": "refused", "password": "password", "database": "no_such_db"}[
        problem
    ] in msg


def test_starting_hosts_on_an_unreachable_database_fails_in_the_command(ray_cluster, make_cfg):
    """``start_hosts`` (candleray live / serve) checks the journals' server before it creates
    any host: the command gets the DatabaseError, no host is left failing to start."""
    import ray

    from actors import start_hosts
    from actors.hosts.host import host_name

    url = f"postgresql+psycopg://candleray:pw@127.0.0.1:{free_port()}/candleray"
    cfg = make_cfg(f"run.database_url={url}", "live.hosts=1")
    with pytest.raises(DatabaseError, match=r"run\.database_url"):
        start_hosts(cfg)
    with pytest.raises(ValueError):
        ray.get_actor(host_name(cfg, 0), namespace=cfg.ray.namespace)


def test_many_hosts_share_one_database_each_journal_its_own(postgres):
    """Hosts starting together create the tables once between them (no catalog race), and
    each journal sees only its own sessions though all write session ids alike."""
    url = postgres.create_database(f"fresh_{uuid.uuid4().hex[:8]}")
    journals: dict[int, Journal] = {}
    errors: list[BaseException] = []

    def open_(i: int) -> None:
        try:
            journals[i] = Journal(url, name=f"m-host-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(journals) == 4
    cands = list(iter_candles(synthetic(30)))
    for i, j in journals.items():
        s = Session("x", "SYN", "1h", "none", settings())
        for c in cands[: 10 + i]:
            tick([(s, c)], FakePredictor(), journal=j)
    for i, j in journals.items():
        assert j.session_ids() == ["x"]
        assert j.last_time("x") == cands[9 + i].time
        assert len(j.candles("x")) == 10 + i
        j.close()


def test_a_journal_file_of_an_earlier_version_is_taken_over_and_resumes(tmp_path):
    """A file with the unnamed tables an earlier candleray wrote: its sessions resume."""
    cands = list(iter_candles(synthetic(40)))
    ref = Journal(tmp_path / "ref.sqlite", name="m-host-0")
    s = Session("x", "SYN", "1h", "none", settings())
    for c in cands:
        tick([(s, c)], FakePredictor(), journal=ref)
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db, sqlite3.connect(tmp_path / "ref.sqlite") as src:
        db.executescript(
            "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, symbol TEXT, timeframe TEXT, "
            "mode TEXT, last_time INTEGER, state TEXT, updated REAL);"
            "CREATE TABLE candles (session_id TEXT, time INTEGER, open REAL, high REAL, low REAL,"
            " close REAL, volume REAL, PRIMARY KEY (session_id, time)) WITHOUT ROWID;"
            "CREATE TABLE events (id INTEGER PRIMARY KEY, session_id TEXT, time INTEGER, "
            "kind TEXT, data TEXT, wall REAL);"
        )
        for table, cols in (
            ("sessions", "session_id, symbol, timeframe, mode, last_time, state, updated"),
            ("candles", "session_id, time, open, high, low, close, volume"),
            ("events", "id, session_id, time, kind, data, wall"),
        ):
            rows = src.execute(f"SELECT {cols} FROM journal_{table}").fetchall()
            marks = ",".join("?" * len(cols.split(",")))
            db.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
    taken = Journal(old, name="m-host-0")
    assert taken.session_ids() == ["x"] and taken.last_time("x") == cands[-1].time
    restored, _ = taken.restore("x", settings())
    assert restored.metrics.predictions == s.metrics.predictions > 0
    assert len(taken.events("x", "prediction")) == len(ref.events("x", "prediction")) > 0
    assert Journal(old, name="m-host-0").session_ids() == ["x"]  # once, not twice


def test_a_restarted_host_waits_for_its_database_to_come_back(postgres, make_cfg):
    """A host Ray restarts while the server does not answer yet (here: its database appears
    during the wait) opens its journal once it does, instead of failing its start for good;
    past the wait it is the DatabaseError."""
    from actors.hosts.host import open_host_journal

    db = f"late_{uuid.uuid4().hex[:8]}"
    cfg = make_cfg(f"run.database_url={postgres.url(db)}")
    now = [0.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s
        if len(waits) == 2:
            postgres.create_database(db)  # the server is back

    journal = open_host_journal(cfg, 0, wait_s=60, sleep=sleep, clock=lambda: now[0])
    assert waits == [1.0, 2.0] and journal.session_ids() == []
    journal.close()
    missing = make_cfg(f"run.database_url={postgres.url('never_' + db)}")
    with pytest.raises(DatabaseError, match=r"run\.database_url"):
        open_host_journal(missing, 0, wait_s=5, sleep=sleep, clock=lambda: now[0])


def test_a_writers_row_locked_by_a_dead_writer_fails_the_claim_instead_of_blocking(postgres):
    """A host whose node died mid-write leaves its connection holding the journal's writers
    row (here: a second connection in an open transaction, SELECT ... FOR UPDATE). The new
    host's claim gives up at the lock timeout with a DatabaseError naming run.database_url,
    not a constructor blocked for hours; once the lock goes, the claim succeeds."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = postgres.create_database(f"lock_{uuid.uuid4().hex[:8]}")
    old = Journal(url, name="m-host-0")
    first = old.claim()
    u = make_url(url)
    holder = psycopg.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database
    )
    try:
        holder.execute(
            "SELECT epoch FROM journal_writers WHERE journal = %s FOR UPDATE", ("m-host-0",)
        )
        new = Journal(url, name="m-host-0", lock_timeout_s=0.5)
        with pytest.raises(DatabaseError, match=r"run\.database_url") as err:
            new.claim()
        assert "lock" in str(err.value)
        holder.rollback()  # the dead writer's transaction ends
        assert new.claim() == first + 1
    finally:
        holder.close()
    with pytest.raises(Exception, match="taken over"):  # the old writer writes nothing more
        old.write([("x", [("stopped", 0, {})])])
    old.close()
    new.close()


def test_reads_on_a_database_that_went_away_name_the_setting(postgres):
    """A journal whose server (here: its database) is gone after it opened: each read is a
    DatabaseError naming run.database_url, not SQLAlchemy's OperationalError."""
    db = f"gone_{uuid.uuid4().hex[:8]}"
    j = Journal(postgres.create_database(db), name="m-host-0")
    assert j.session_ids() == []
    import psycopg

    j._engine.dispose()  # no pooled connection keeps the database from being dropped
    with psycopg.connect(
        host="127.0.0.1",
        port=postgres.port,
        user="candleray",
        password="candleray-test-pw",
        dbname="postgres",
        autocommit=True,
    ) as con:
        con.execute(f'DROP DATABASE "{db}"')
    for read in (
        j.session_ids,
        lambda: j.last_time("x"),
        lambda: j.candles("x"),
        lambda: j.events("x", "trade"),
        lambda: j.chart("x"),
    ):
        with pytest.raises(DatabaseError, match=r"run\.database_url"):
            read()
    j.close()


def test_a_host_retries_a_locked_claim_within_its_start_wait(postgres, make_cfg):
    """The host's claim runs in the same wait-for-the-database loop as its connect: a writers
    row still locked by a dead node's connection is tried again (here the lock goes during
    the second wait) instead of failing the host's start for good; a lock that outlasts the
    wait is the DatabaseError naming run.database_url."""
    import psycopg
    from sqlalchemy.engine import make_url

    from actors.hosts.host import wait_for_database

    url = postgres.create_database(f"relock_{uuid.uuid4().hex[:8]}")
    cfg = make_cfg(f"run.database_url={url}")
    journal = Journal(url, name="m-host-0", lock_timeout_s=0.3)
    first = journal.claim()
    u = make_url(url)
    holder = psycopg.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database
    )
    lock = "SELECT epoch FROM journal_writers WHERE journal = 'm-host-0' FOR UPDATE"
    now = [0.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s
        if len(waits) == 2:
            holder.rollback()

    try:
        holder.execute(lock)
        got = wait_for_database(cfg, 0, journal.claim, wait_s=60, sleep=sleep, clock=lambda: now[0])
        assert got == first + 1 and waits == [1.0, 2.0]
        holder.execute(lock)
        with pytest.raises(DatabaseError, match=r"run\.database_url"):
            wait_for_database(cfg, 0, journal.claim, wait_s=3, sleep=sleep, clock=lambda: now[0])
    finally:
        holder.close()
        journal.close()


@pytest.mark.slow
def test_the_test_server_starts_on_another_port_when_its_port_was_taken(postgres, monkeypatch):
    """Two test runs on one machine: the port free_port() gave is taken before the server
    binds it. The start tries another port instead of failing every database test."""
    import socket

    import pg_server

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1], free_port()])
    monkeypatch.setattr(pg_server, "free_port", lambda: next(ports))
    try:
        server = pg_server.start()
        try:
            assert server.port != taken.getsockname()[1]
            assert Journal(server.url("candleray"), name="m-host-0").session_ids() == []
        finally:
            server.stop()
    finally:
        taken.close()
