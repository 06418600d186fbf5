import numpy as np
import pandas as pd

from pipelines.data.labels import BUY, HOLD, SELL, UNKNOWN, action_labels, move_actions, pivots


def series(highs: list[float]) -> pd.DataFrame:
    h = np.array(highs, dtype=float)
    idx = pd.date_range("2024-01-01", periods=len(h), freq="1h", tz="UTC", name="time")
    return pd.DataFrame(
        {"open": h - 1, "high": h, "low": h - 2, "close": h - 1, "volume": 1.0}, index=idx
    )


# a zig-zag with a known high at bar 3 and a known low at bar 7 (2 bars each side)
ZIGZAG = [10, 11, 12, 15, 12, 11, 9, 6, 8, 10, 12]


def test_known_pivots_with_confirmation_bar():
    p = pivots(series(ZIGZAG), 2)
    assert list(zip(p["bar"], p["kind"], p["confirmed_bar"], strict=True)) == [
        (3, "H", 5),
        (7, "L", 9),
    ]
    assert p.loc[0, "price"] == 15 and p.loc[1, "price"] == 4


def test_pivots_have_no_look_ahead():
    df = series(ZIGZAG + [13, 9, 14, 8, 15])
    full = pivots(df, 2)
    for t in range(len(df)):
        seen = pivots(df.iloc[: t + 1], 2)
        confirmed = full[full["confirmed_bar"] <= t]
        # what is known at bar t is exactly the pivots confirmed by bar t, never one earlier
        assert (
            seen[["bar", "kind"]].values.tolist() == confirmed[["bar", "kind"]].values.tolist()
        ), t


def test_move_actions_threshold():
    close = np.array([100.0, 100.1, 100.0, 100.0, 99.9])
    assert move_actions(close, 0.0005).tolist() == [BUY, SELL, HOLD, SELL, UNKNOWN]
    assert move_actions(close, 0.002).tolist() == [HOLD, HOLD, HOLD, HOLD, UNKNOWN]


def test_pivot_label_wins_over_move():
    df = series(ZIGZAG)
    lab = action_labels(df, 2, 0.0005)
    assert lab[3] == SELL and lab[7] == BUY
    assert lab[-1] == UNKNOWN
    assert lab[0] == BUY  # close rises 10 -> 11: a price-move label
