"""Backtest speed: candleray's simulator vs backtesting.py and vectorbt on the same signals.

    .venv/bin/python bench/backtest_speed.py            # 1 x 100k bars and 100 x 10k bars
    .venv/bin/python bench/backtest_speed.py --quick    # small sizes, a smoke run

Every engine gets the same seeded candles (1-minute, 24/7) and the same BUY/SELL/HOLD signals
and runs the same semantics: fills at the next bar's open, commission on both sides, all-in
whole units, long/short stop-and-reverse (or long-only with --direction long_only).

What is timed (best of --repeat runs; candles and signals are built beforehand):
* candleray: ``simulate()`` per symbol: input checks, the trades (as arrays), per-bar equity
  and position, all statistics; "candleray+table" also builds the trades DataFrame
  (``result.trades``, built on first access).
* backtesting.py 0.6.6: ``Backtest(...).run()`` per symbol, with the strategy the parity tests
  use. For many symbols only --bt-symbols of them run and the time is scaled up (said so).
* vectorbt: ``Portfolio.from_signals`` on all symbols at once (2-D, its fastest form), then
  total return and the trade records; numba's first-call compile is excluded by a warm-up.
  Skipped with a message when vectorbt is not installed (``pip install vectorbt``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TQDM_DISABLE", "1")  # backtesting.py's progress bar
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backtesting import Backtest  # noqa: E402  (imported before any timing)
from tests.test_backtest_parity import SignalStrategy  # noqa: E402  (the parity tests' reference)

from pipelines.backtest import BacktestSpec, simulate  # noqa: E402


def make_candles(n: int, seed: int) -> pd.DataFrame:
    """Seeded 1-minute candles (geometric random walk around 100) in the candle schema."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.0002, n))
    wick = np.abs(rng.normal(0, 0.0005, n))
    idx = pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC", name="time")
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) * (1 + wick),
            "low": np.minimum(open_, close) * (1 - wick),
            "close": close,
            "volume": 1.0,
        },
        index=idx,
    )


def make_signals(n: int, seed: int, density: float) -> np.ndarray:
    """BUY and SELL each with probability density/2 per bar, HOLD otherwise; HOLD on bar 0."""
    rng = np.random.default_rng(seed + 10_000)
    sig = rng.choice(
        np.array([1, -1, 0], dtype=np.int8), size=n, p=[density / 2, density / 2, 1 - density]
    )
    sig[0] = 0  # backtesting.py never looks at bar 0
    return sig


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


# --- engines ------------------------------------------------------------------------------------


def run_candleray(
    frames: list[pd.DataFrame], sigs: list[np.ndarray], spec: BacktestSpec, table: bool = False
) -> list[int]:
    out = []
    for df, s in zip(frames, sigs, strict=True):
        res = simulate(df, s, spec)
        if table:
            res.trades  # noqa: B018  (the trades DataFrame is built on first access)
        out.append(res.stats["n_trades"])
    return out


def run_backtesting(
    frames: list[pd.DataFrame], sigs: list[np.ndarray], spec: BacktestSpec
) -> list[int]:
    out = []
    for df, s in zip(frames, sigs, strict=True):
        raw = df.rename(columns=str.capitalize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bt = Backtest(
                raw,
                SignalStrategy,
                cash=spec.cash,
                commission=spec.commission,
                exclusive_orders=True,
                finalize_trades=spec.at_end == "close",
            )
            stats = bt.run(signals=s, long_short=spec.direction == "long_short")
        out.append(int(stats["# Trades"]))
    return out


def vectorbt_runner(
    spec: BacktestSpec,
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], list[int]] | str:
    """A function (open, close, signals as (N, S) arrays) -> trades per symbol, or why not."""
    try:
        import vectorbt as vbt
    except Exception as exc:  # ImportError, or a numba/numpy mismatch at import
        return f"vectorbt not importable ({type(exc).__name__}: {exc}); install it with `pip install vectorbt`"

    def run(open_: np.ndarray, close: np.ndarray, sig: np.ndarray) -> list[int]:
        # a signal at bar i fills at bar i+1's open: shift the signals, trade at the open
        buy = np.zeros(sig.shape, dtype=bool)
        sell = np.zeros(sig.shape, dtype=bool)
        buy[1:], sell[1:] = sig[:-1] == 1, sig[:-1] == -1
        kw = dict(
            price=open_,
            fees=spec.commission,
            init_cash=spec.cash,
            size=np.inf,
            size_granularity=1.0 if spec.units == "whole" else None,
        )
        if spec.direction == "long_short":
            pf = vbt.Portfolio.from_signals(
                close, buy, sell, direction="both", upon_opposite_entry="reverse", **kw
            )
        else:
            pf = vbt.Portfolio.from_signals(close, buy, sell, direction="longonly", **kw)
        pf.total_return()
        return np.atleast_1d(pf.trades.count()).astype(int).tolist()

    return run


# --- cases --------------------------------------------------------------------------------------


def bench_case(
    name: str,
    n_symbols: int,
    n_bars: int,
    args: argparse.Namespace,
    spec: BacktestSpec,
    vbt_run: Callable | str,
) -> list[tuple]:
    frames = [make_candles(n_bars, seed) for seed in range(n_symbols)]
    sigs = [make_signals(n_bars, seed, args.density) for seed in range(n_symbols)]
    total_bars = n_symbols * n_bars
    rows = []

    run_candleray(frames[:1], sigs[:1], spec)  # warm-up (imports, first-call caches)
    t_cr, trades_cr = best_of(args.repeat, lambda: run_candleray(frames, sigs, spec))
    rows.append(
        (name, "candleray", total_bars, t_cr, sum(trades_cr), "stats, equity, trade arrays")
    )
    t_tab, _ = best_of(args.repeat, lambda: run_candleray(frames, sigs, spec, table=True))
    rows.append(
        (name, "candleray+table", total_bars, t_tab, sum(trades_cr), "and the trades DataFrame")
    )

    k = min(n_symbols, args.bt_symbols)
    t_bt, trades_bt = best_of(1, lambda: run_backtesting(frames[:k], sigs[:k], spec))
    scale = n_symbols / k
    note = (
        f"timed {k} of {n_symbols} symbols (trades are theirs), time x{scale:g}"
        if k < n_symbols
        else ""
    )
    same = "same trade counts" if trades_bt == trades_cr[:k] else "TRADE COUNTS DIFFER"
    rows.append(
        (
            name,
            "backtesting.py",
            total_bars,
            t_bt * scale,
            sum(trades_bt),
            f"{same} as candleray; {note}".strip("; "),
        )
    )

    if isinstance(vbt_run, str):
        rows.append(
            (name, "vectorbt", total_bars, float("nan"), float("nan"), "skipped: " + vbt_run)
        )
    else:
        o = np.column_stack([f["open"].to_numpy() for f in frames])  # (N, S)
        c = np.column_stack([f["close"].to_numpy() for f in frames])
        s = np.column_stack(sigs)
        vbt_run(o[:200], c[:200], s[:200])  # warm-up: numba compiles on first call
        vbt_run(o[:200, :1], c[:200, :1], s[:200, :1])
        t_vbt, trades_vbt = best_of(args.repeat, lambda: vbt_run(o, c, s))
        rows.append(
            (name, "vectorbt", total_bars, t_vbt, sum(trades_vbt), "2-D, all symbols in one call")
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--direction", choices=["long_short", "long_only"], default="long_short")
    ap.add_argument("--commission", type=float, default=0.0002)
    ap.add_argument("--cash", type=float, default=1_000_000.0)
    ap.add_argument("--density", type=float, default=0.1, help="share of bars with BUY or SELL")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--bt-symbols",
        type=int,
        default=5,
        help="symbols backtesting.py runs in the 100-symbol case",
    )
    ap.add_argument("--quick", action="store_true", help="1 x 10k and 10 x 2k bars")
    ap.add_argument(
        "--skip-model",
        action="store_true",
        help="skip part 2: model-driven backtest vs raw forward, Ray parallel vs sequential",
    )
    args = ap.parse_args(argv)

    spec = BacktestSpec(cash=args.cash, commission=args.commission, direction=args.direction)
    cases = (
        [("1 x 10k", 1, 10_000), ("10 x 2k", 10, 2_000)]
        if args.quick
        else [("1 x 100k", 1, 100_000), ("100 x 10k", 100, 10_000)]
    )
    vbt_run = vectorbt_runner(spec)
    print(f"semantics: {spec.as_dict()}; signal density {args.density}; best of {args.repeat}")
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    rows = []
    for name, n_sym, n_bars in cases:
        rows += bench_case(name, n_sym, n_bars, args, spec, vbt_run)

    ours = {r[0]: r[3] for r in rows if r[1] == "candleray"}
    ours_table = {r[0]: r[3] for r in rows if r[1] == "candleray+table"}
    head = (
        f"{'case':<11}{'engine':<17}{'bars':>10}{'seconds':>10}{'bars/s':>13}{'trades':>9}"
        f"{'x candleray':>13}{'x +table':>10}  note"
    )
    print(head)
    print("-" * len(head))
    for case, engine, bars, secs, trades, note in rows:
        rate = bars / secs if np.isfinite(secs) else float("nan")
        print(
            f"{case:<11}{engine:<17}{bars:>10,}{secs:>10.4f}{rate:>13,.0f}{trades:>9,.0f}"
            f"{secs / ours[case]:>12.2f}x{secs / ours_table[case]:>9.2f}x  {note}"
        )
    print(
        "x candleray / x +table: that engine's time over candleray's (without / with the trades "
        "DataFrame); above 1 means candleray is faster"
    )
    if not args.skip_model:
        # bench/ is on sys.path when this file runs as a script
        from backtest_model_speed import main as model_main

        print("\n== part 2: model-driven backtests ==")
        model_main([])


if __name__ == "__main__":
    main()
