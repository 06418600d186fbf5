"""Backtest speed: candleray's simulator vs backtesting.py and vectorbt on the same signals.

    .venv/bin/python bench/backtest_speed.py            # 1 x 100k bars and 100 x 10k bars
    .venv/bin/python bench/backtest_speed.py --quick    # small sizes, a smoke run

Every engine gets the same seeded candles (1-minute, 24/7) and the same BUY/SELL/HOLD signals
and runs the same semantics: fills at the next bar's open, commission on both sides, all-in
whole units, long/short stop-and-reverse (or long-only with --direction long_only).

What is timed (candles and signals are built beforehand):
* candleray: ``simulate_many()`` over all symbols (``simulate()`` per symbol, with shared input
  checks and the engine's sequential part stepping all symbols together; one symbol is plain
  ``simulate``): input checks, the trades (as arrays), per-bar equity and position, all
  statistics; "candleray+table" also builds each trades DataFrame (``result.trades``).
* backtesting.py 0.6.6: ``Backtest(...).run()`` per symbol, with the strategy the parity tests
  use. For many symbols only --bt-symbols of them run and the time is scaled up (said so).
* vectorbt: ``Portfolio.from_signals`` on all symbols at once (2-D, its fastest form), then
  total return and the trade records; numba's first-call compile is excluded by a warm-up.
  Skipped with a message when vectorbt is not installed (``pip install -e '.[bench]'``).

Ratios are paired: each round times every engine back to back, in alternating order (forward,
then reversed), and each ratio is taken within the round, so load on the machine that comes
and goes hits both sides of it. The table gives the median time, and the median of the
per-round ratios with their min-max over --rounds rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
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

from pipelines.backtest import BacktestSpec  # noqa: E402
from pipelines.backtest.batch import simulate_many  # noqa: E402
from tests.backtest.test_backtest_parity import SignalStrategy  # noqa: E402  (the parity tests' reference)


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


def paired_rounds(
    engines: dict[str, Callable[[], object]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Seconds of every engine in every round; each round runs all of them back to back, in
    the given order on even rounds and reversed on odd ones. Also each engine's last output."""
    times: dict[str, list[float]] = {k: [] for k in engines}
    out: dict[str, object] = {}
    names = list(engines)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            out[k] = engines[k]()
            times[k].append(time.perf_counter() - t)
    return times, out


def ratio_text(num: list[float], den: list[float]) -> str:
    """Median of the per-round ratios num/den, with their min-max: "3.10x (2.9-3.3)"."""
    r = [a / b for a, b in zip(num, den, strict=True)]
    return f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"


# --- engines ------------------------------------------------------------------------------------


def run_candleray(
    frames: list[pd.DataFrame], sigs: list[np.ndarray], spec: BacktestSpec, table: bool = False
) -> list[int]:
    results = simulate_many(frames, sigs, spec)
    if table:
        for res in results:
            res.trades  # noqa: B018  (the trades DataFrame is built on first access)
    return [res.stats["n_trades"] for res in results]


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
    """Rows (case, engine, bars, median seconds, trades, x candleray, x +table, note)."""
    frames = [make_candles(n_bars, seed) for seed in range(n_symbols)]
    sigs = [make_signals(n_bars, seed, args.density) for seed in range(n_symbols)]
    total_bars = n_symbols * n_bars
    k = min(n_symbols, args.bt_symbols)
    scale = n_symbols / k
    engines: dict[str, Callable[[], object]] = {
        "candleray": lambda: run_candleray(frames, sigs, spec),
        "candleray+table": lambda: run_candleray(frames, sigs, spec, table=True),
        "backtesting.py": lambda: run_backtesting(frames[:k], sigs[:k], spec),
    }
    run_candleray(frames[:1], sigs[:1], spec)  # warm-up (imports, first-call caches)
    if not isinstance(vbt_run, str):
        o = np.column_stack([f["open"].to_numpy() for f in frames])  # (N, S)
        c = np.column_stack([f["close"].to_numpy() for f in frames])
        s = np.column_stack(sigs)
        vbt_run(o[:200], c[:200], s[:200])  # warm-up: numba compiles on first call
        vbt_run(o[:200, :1], c[:200, :1], s[:200, :1])
        engines["vectorbt"] = lambda: vbt_run(o, c, s)
    times, out = paired_rounds(engines, args.rounds)
    times["backtesting.py"] = [t * scale for t in times["backtesting.py"]]
    trades_cr = out["candleray"]
    ours, ours_table = times["candleray"], times["candleray+table"]

    def row(engine: str, trades: float, note: str) -> tuple:
        t = times[engine]
        return (
            name,
            engine,
            total_bars,
            statistics.median(t),
            trades,
            ratio_text(t, ours),
            ratio_text(t, ours_table),
            note,
        )

    rows = [
        row("candleray", sum(trades_cr), "stats, equity, trade arrays"),
        row("candleray+table", sum(trades_cr), "and the trades DataFrames"),
    ]
    trades_bt = out["backtesting.py"]
    note = (
        f"timed {k} of {n_symbols} symbols (trades are theirs), time x{scale:g}"
        if k < n_symbols
        else ""
    )
    same = "same trade counts" if trades_bt == trades_cr[:k] else "TRADE COUNTS DIFFER"
    rows.append(row("backtesting.py", sum(trades_bt), f"{same} as candleray; {note}".strip("; ")))
    if isinstance(vbt_run, str):
        rows.append(
            (name, "vectorbt", total_bars, math.nan, math.nan, "-", "-", "skipped: " + vbt_run)
        )
    else:
        rows.append(row("vectorbt", sum(out["vectorbt"]), "2-D, all symbols in one call"))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--direction", choices=["long_short", "long_only"], default="long_short")
    ap.add_argument("--commission", type=float, default=0.0002)
    ap.add_argument("--cash", type=float, default=1_000_000.0)
    ap.add_argument("--density", type=float, default=0.1, help="share of bars with BUY or SELL")
    ap.add_argument("--rounds", type=int, default=7, help="paired rounds per case")
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
    print(
        f"semantics: {spec.as_dict()}; signal density {args.density}; {args.rounds} paired rounds"
    )
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    rows = []
    for name, n_sym, n_bars in cases:
        rows += bench_case(name, n_sym, n_bars, args, spec, vbt_run)

    head = (
        f"{'case':<11}{'engine':<17}{'bars':>10}{'seconds':>10}{'bars/s':>13}{'trades':>9}"
        f"  {'x candleray':<24}{'x +table':<24}note"
    )
    print(head)
    print("-" * len(head))
    for case, engine, bars, secs, trades, x_cr, x_tab, note in rows:
        rate = bars / secs if np.isfinite(secs) else float("nan")
        print(
            f"{case:<11}{engine:<17}{bars:>10,}{secs:>10.4f}{rate:>13,.0f}{trades:>9,.0f}"
            f"  {x_cr:<24}{x_tab:<24}{note}"
        )
    print(
        "seconds: median over rounds; x candleray / x +table: that engine's time over candleray's "
        "(without / with the trades DataFrames) in the same round, median (min-max) over "
        "rounds; above 1 means candleray is faster"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if not args.skip_model:
        # bench/ is on sys.path when this file runs as a script
        from backtest_model_speed import main as model_main

        print("\n== part 2: model-driven backtests ==")
        model_main([])


if __name__ == "__main__":
    main()
