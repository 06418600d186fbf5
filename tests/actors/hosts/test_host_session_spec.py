"""What a session host accepts as a new session, without Ray (``HostCore.start_session``): a
timeframe given beside a sample symbol resamples it (as ``@tf`` does), a replay start after
the data is refused with the series' span, and a host holds at most ``live.max_sessions``."""

from __future__ import annotations

import time

import pytest

from actors.hosts.core import HostCore
from actors.hosts.host import host_journal
from pipelines.errors import CapacityError, DataSourceError, InvalidInputError


class NoTraining:
    def submit(self, *args):
        raise AssertionError("mode none must not train")

    def poll(self, handle):
        raise AssertionError("mode none must not train")


def host(cfg) -> HostCore:
    return HostCore(cfg, 0, object(), NoTraining(), host_journal(cfg, 0), clock=time.monotonic)


def test_a_timeframe_beside_a_sample_symbol_resamples_it(make_cfg):
    core = host(make_cfg())
    try:
        given = core.start_session("sample:EURUSD", "4h", "none", "replay")
        named = core.start_session("sample:EURUSD@4h", None, "none", "replay")
        assert given["timeframe"] == named["timeframe"] == "4h"
        assert given["symbol"] == named["symbol"]
        with pytest.raises(InvalidInputError, match="give the timeframe once"):
            core.start_session("sample:EURUSD@1h", "4h", "none", "replay")
        with pytest.raises(DataSourceError, match="cannot be made finer") as e:
            core.start_session("sample:GOOG", "1h", "none", "replay")  # a daily series
        assert "names timeframe" not in str(e.value)
        assert len(core.list_sessions()) == 2  # the refusals started nothing
    finally:
        core.close()


def test_a_replay_start_after_the_data_is_refused_with_the_span(make_cfg):
    core = host(make_cfg())
    try:
        with pytest.raises(InvalidInputError, match=r"after the data of synthetic:SYN0.*spans"):
            core.start_session("synthetic:SYN0", None, "none", "replay", 0, "2030-01-01T00:00Z")
        assert core.list_sessions() == []
        ok = core.start_session("synthetic:SYN0", None, "none", "replay", 0, -100)
        assert ok["state"] == "running"
    finally:
        core.close()


def test_a_host_refuses_sessions_past_its_limit_until_one_stops(make_cfg):
    core = host(make_cfg("live.max_sessions=2"))
    try:
        a = core.start_session("synthetic:A", None, "none", "replay")["id"]
        core.start_session("synthetic:B", None, "none", "replay")
        with pytest.raises(CapacityError, match=r"live\.max_sessions=2"):
            core.start_session("synthetic:C", None, "none", "replay")
        assert len(core.list_sessions()) == 2
        core.stop_session(a)
        assert core.start_session("synthetic:C", None, "none", "replay")["state"] == "running"
    finally:
        core.close()
