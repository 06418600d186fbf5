"""``candleray live`` as a user runs it: bad arguments refused up front, a replay to the end."""

from __future__ import annotations

import json

import pytest
from support import tiny_overrides

from pipelines import cli


@pytest.fixture
def tiny(tmp_path) -> list[str]:
    return [*tiny_overrides(tmp_path, "livecli"), "live.hosts=1"]


@pytest.mark.parametrize(
    "bad, says",
    [
        (["--symbols", ",", "--candles", "5"], "--symbols is empty"),
        (["--symbols", "synthetic:SYN0", "--speed", "-1"], "--speed"),
        (["--symbols", "synthetic:SYN0", "--candles", "0"], "--candles"),
        (["--symbols", "synthetic:SYN0", "--json"], "--json"),
        (["--symbols", "nosuch:X@7q"], "7q"),
    ],
)
def test_bad_arguments_exit_2_before_anything_starts(tiny, capsys, bad, says):
    import ray

    was_up = ray.is_initialized()
    assert cli.main(["live", *bad, *tiny]) == 2
    assert says in capsys.readouterr().err
    assert ray.is_initialized() == was_up  # nothing was started


def test_bad_mode_or_source_is_an_argparse_error(tiny):
    with pytest.raises(SystemExit) as e:
        cli.main(["live", "--symbols", "synthetic:SYN0", "--mode", "sometimes", *tiny])
    assert e.value.code == 2


def test_replay_for_n_candles_prints_final_metrics_as_json(ray_cluster, tiny, capsys):
    args = ["--symbols", "synthetic:SYN0,synthetic:SYN1", "--timeframe", "1h"]
    args += ["--mode", "every_candle", "--source", "replay", "--speed", "0"]
    assert cli.main(["live", *args, "--candles", "40", "--json", *tiny]) == 0
    final = json.loads(capsys.readouterr().out)
    assert [s["symbol"] for s in final] == ["synthetic:SYN0@1h", "synthetic:SYN1@1h"]
    for s in final:
        m = s["metrics"]
        assert m["candles"] == 40 and m["predictions"] == 40 and s["mode"] == "every_candle"
        assert m["train_requested"] == 40 and s["prediction"]["action"] in ("HOLD", "BUY", "SELL")
