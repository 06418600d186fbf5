"""The demo's replay phase plays only held-out bars, and reports them beside the baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.cli.demo import persistence_direction, replay_plan, replay_table


def frame(n: int, start: str = "2024-01-01") -> pd.DataFrame:
    idx = pd.date_range(start, periods=n, freq="1h", tz="UTC", name="time")
    c = np.linspace(100.0, 110.0, n)
    return pd.DataFrame({"open": c, "high": c, "low": c, "close": c, "volume": 1.0}, index=idx)


def test_replay_plan_plays_only_bars_after_the_holdout_cut():
    frames = {"a": frame(500), "b": frame(500), "c": frame(100)}
    ranges = {
        "a": {"holdout_start": str(frames["a"].index[400])},  # 100 held-out bars
        "b": {"holdout_start": str(frames["b"].index[100])},  # 400 held-out bars
        "c": {"holdout_start": ""},  # all before the cut: it trained the model
    }
    plan = replay_plan(frames, ranges, candles=300)
    assert plan == {"a": -100, "b": -300}
    for key, start in plan.items():  # the first replayed bar is at or after the cut
        assert frames[key].index[start] >= pd.Timestamp(ranges[key]["holdout_start"])


def test_persistence_baseline_settles_each_bar_against_the_next():
    # moves: +1, +1, -1, -1, +1 -> persistence predicts the previous move for the last four
    closes = np.array([10.0, 11.0, 12.0, 11.0, 10.0, 11.0])
    assert persistence_direction(closes) == 0.5  # right: +1->+1, -1->-1; wrong: +1->-1, -1->+1


def test_replay_table_shows_session_metrics_beside_the_always_hold_baseline():
    m = {
        "candles": 300,
        "direction_acc": 0.71,
        "win_rate": float("nan"),
        "paper_pnl": 12.5,
        "trades": 0,
        "train_requested": 296,
        "train_done": 290,
        "train_dropped": 6,
    }
    text = replay_table([("synthetic:SYN0", m, 0.31)])
    row = text.splitlines()[1]
    assert row.split()[:5] == ["synthetic:SYN0", "300", "0.710", "0.310", "+12.50"]
    assert "296/290/6" in row
    assert "always-HOLD baseline: paper PnL +0.00 and 0 trades" in text
