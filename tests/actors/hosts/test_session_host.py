"""Session hosts on Ray: each live mode end to end on a replayed feed through a host."""

from __future__ import annotations

import pytest
from host_support import call, finished, hosts_for, journal_of, kill, wait_until

from actors import assign_host, find_hosts, host_of, stop_hosts
from pipelines.errors import InvalidInputError, ModeError


def test_assign_host_least_loaded_and_ids_name_their_host():
    assert assign_host("a", [3, 1, 2]) == 1
    assert assign_host("x", [0, 0]) == assign_host("x", [0, 0])  # stable
    assert host_of("h3-synthetic-SYN0-1h") == 3
    with pytest.raises(InvalidInputError):
        host_of("synthetic:SYN0")


def test_none_mode_over_500_candles_leaves_weights_alone(ray_cluster, make_cfg):
    cfg = make_cfg("live.hosts=1")
    client, (host,) = hosts_for(cfg)
    before = client.call("weights_version")
    st = call(host.start_session.remote("synthetic:SYN0", "1h", "none", "replay", 0, -500))
    sid = st["id"]
    assert host_of(sid) == 0 and st["mode"] == "none"
    wait_until(lambda: finished(host, [sid]), what="the replay to finish")
    m = call(host.status.remote(sid))["metrics"]
    assert m["candles"] == 500 and m["predictions"] == 500 and m["settled"] == 499
    assert m["train_requested"] == 0 and m["weights_version"] == before[1]
    assert client.call("weights_version") == before
    chart = call(host.chart.remote(sid))
    assert len(chart["ghosts"]) == 500 and len(chart["candles"]) >= 500
    with pytest.raises(ModeError, match="manual"):
        call(host.manual_train.remote(sid, "BUY"))
    # a clean end (Ctrl-C of candleray live, the end of serve): the session is over for good
    (report,) = stop_hosts([host])
    assert report["stopped"] == [sid] and report["journaled"]
    wait_until(lambda: not _named(cfg), what="the stopped host's name to be free")
    _, (again,) = hosts_for(cfg)  # the next run of the same run name resumes nothing
    assert call(again.list_sessions.remote()) == []
    stop_hosts([again])


def _named(cfg) -> bool:
    try:
        find_hosts(cfg)
        return True
    except ValueError:
        return False


def test_training_modes_train_through_the_actor_and_counts_add_up(ray_cluster, make_cfg):
    cfg = make_cfg("live.hosts=1")
    client, (host,) = hosts_for(cfg)
    v0 = client.call("weights_version")[1]
    ids = [
        call(host.start_session.remote("synthetic:SYN0", "1h", m, "replay", 0, -150))["id"]
        for m in ("every_candle", "pivots_only")
    ]
    manual = call(host.start_session.remote("synthetic:SYN1", "1h", "manual", "replay", 5, -40))
    wait_until(lambda: call(host.status.remote(manual["id"]))["metrics"]["candles"] >= 3)
    asked = call(host.manual_train.remote(manual["id"], "SELL"))
    assert asked["queued"] == 1 and asked["action"] == "SELL"
    wait_until(lambda: finished(host, [*ids, manual["id"]]), what="the replays to finish")
    every, pivots, man = (call(host.status.remote(i))["metrics"] for i in (*ids, manual["id"]))
    lag = max(1, cfg.labels.pivot_bars)
    # primed history: every played candle makes one bar's label final (lag bars back)
    assert every["train_requested"] == 150 and lag >= 1
    assert 0 < pivots["train_requested"] < every["train_requested"]
    assert man["train_requested"] == 1
    stats = call(host.stats.remote())
    assert stats["requested"] == stats["done"] + stats["dropped"]
    assert stats["dropped"] == 0 and stats["timeouts"] == 0
    # every answered call is one actor step, and nothing else trained this model
    assert client.call("weights_version")[1] == v0 + stats["steps_done"] > v0
    j = journal_of(cfg)
    assert [d["to"] for _, d in j.events(ids[0], "mode")] == []
    call(host.set_mode.remote(ids[0], "manual"))
    assert [d["to"] for _, d in j.events(ids[0], "mode")] == ["manual"]
    call(host.shutdown.remote())
    kill(host)
