"""The train/hold-out split: one cut time for all symbols, no label crossing it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.data.candles import resample, timeframe_seconds
from pipelines.data.dataset import build_split
from pipelines.data.sources import SymbolSpec

NS = 1_000_000_000


def hourly(n: int, start: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n, freq="1h", tz="UTC", name="time")
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    o = np.r_[100, c[:-1]]
    return pd.DataFrame(
        {
            "open": o,
            "high": np.maximum(o, c) * 1.001,
            "low": np.minimum(o, c) * 0.999,
            "close": c,
            "volume": rng.uniform(1, 5, n),
        },
        index=idx,
    )


@pytest.fixture
def cfg(make_cfg):
    return make_cfg("data.extra_timeframes=[]", "features.window=16", "labels.pivot_bars=3")


def check_no_leak(split, specs, cfg) -> pd.Timestamp:
    """Every training label closes by the cut; every held-out window ends at or after it."""
    horizon = max(1, cfg.labels.pivot_bars) + 1  # bars until the label's last bar closes
    # no symbol's training labels reach into any symbol's held-out period
    for spec in specs:
        bar = pd.Timedelta(seconds=timeframe_seconds(spec.timeframe))
        train_end = split.ranges[spec.key]["train_end"]
        for other in specs:
            held = split.ranges[other.key]["holdout_start"]
            if train_end and held:
                assert pd.Timestamp(train_end) + horizon * bar <= pd.Timestamp(held), (
                    f"{spec.key} trains on labels up to {pd.Timestamp(train_end) + horizon * bar},"
                    f" {other.key} holds out from {held}"
                )
    cut = pd.Timestamp(split.cut)
    for i, spec in enumerate(specs):
        bar = timeframe_seconds(spec.timeframe) * NS
        tr = split.train.end_time[split.train.symbol == i]
        ho = split.holdout.end_time[split.holdout.symbol == i]
        assert (tr + horizon * bar <= cut.value).all(), spec.key
        assert (ho >= cut.value).all(), spec.key
        r = split.ranges[spec.key]
        assert r["holdout_start"] == "" or pd.Timestamp(r["holdout_start"]) >= cut
        assert r["train_end"] == "" or pd.Timestamp(r["train_end"]) < cut
    return cut


def test_the_same_asset_at_two_timeframes_is_cut_at_one_time(cfg):
    h1 = hourly(24 * 200, "2024-01-01", seed=1)
    specs = [SymbolSpec("x", "BTC/USDT", "1h"), SymbolSpec("x", "BTC/USDT", "1d")]
    split = build_split(dict(zip(specs, [h1, resample(h1, "1d")], strict=True)), cfg)
    cut = check_no_leak(split, specs, cfg)
    # the cut holds out about holdout_fraction of all windows, both symbols held out past it
    n = len(split.train) + len(split.holdout)
    assert len(split.holdout) == pytest.approx(cfg.train.holdout_fraction * n, rel=0.05)
    assert (np.bincount(split.holdout.symbol, minlength=2) > 0).all()
    assert cut == pd.Timestamp(split.ranges[specs[0].key]["holdout_start"])


def test_symbols_listed_at_different_times_share_the_cut(cfg):
    old = hourly(24 * 300, "2023-01-01", seed=2)
    new = old.iloc[-24 * 60 :].copy()  # listed later, same end
    specs = [SymbolSpec("x", "OLD/USDT", "1h"), SymbolSpec("x", "NEW/USDT", "1h")]
    split = build_split(dict(zip(specs, [old, new], strict=True)), cfg)
    check_no_leak(split, specs, cfg)
    starts = {k: r["holdout_start"] for k, r in split.ranges.items()}
    assert starts[specs[0].key] == starts[specs[1].key] == split.cut  # per symbol they differed
    ends = {k: r["train_end"] for k, r in split.ranges.items()}
    assert ends[specs[0].key] == ends[specs[1].key]


def test_a_symbol_wholly_before_the_cut_only_trains(cfg):
    early = hourly(24 * 40, "2022-01-01", seed=3)
    late = hourly(24 * 200, "2024-01-01", seed=4)
    specs = [SymbolSpec("x", "EARLY", "1h"), SymbolSpec("x", "LATE", "1h")]
    split = build_split(dict(zip(specs, [early, late], strict=True)), cfg)
    check_no_leak(split, specs, cfg)
    assert split.ranges[specs[0].key]["holdout_start"] == ""
    assert (split.holdout.symbol == 1).all() and (split.train.symbol == 0).any()
