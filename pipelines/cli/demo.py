"""``candleray demo``: offline end to end: train, evaluate on held-out ranges, backtest, replay.

The replay phase plays the last held-out bars of each symbol (after the one hold-out cut) to
live sessions in ``every_candle`` mode on the real session hosts (``actors.hosts.host``) at
speed 0: each candle is predicted, settled, paper-traded and trained on as it closes.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conf import Config
from pipelines.cli.backtest import cmd_backtest
from pipelines.cli.train import cmd_train, ui_link

DEMO_UNSEEN_SYMBOL = "synthetic:SYN9"  # backtested by the demo, never trained on
DEMO_REPLAY_CANDLES = 300  # per symbol: the last held-out bars replayed to live sessions
DEMO_REPLAY_TIMEOUT_S = 180.0


def register(sub: Any) -> None:
    d = sub.add_parser(
        "demo",
        help="offline end-to-end: train on samples + synthetic, evaluate on a held-out range",
    )
    d.add_argument(
        "--keep",
        action="store_true",
        help="resume the previous demo model instead of starting fresh",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    return cmd_demo(cfg, args.keep)


def cmd_demo(cfg: Config, keep: bool) -> int:
    ckpt_dir = Path(cfg.checkpoint.uri) / cfg.run.name
    if not keep and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a fresh demo model each time; MLflow keeps every past run
    out = cmd_train(cfg, show_table=True)
    table = out["table"]
    syn = [s for s in table.index if s.startswith("synthetic:")]
    ok = True
    if syn:
        acc = float(table.loc[syn, "dir_acc"].mean())
        ok = acc >= 0.65
        print(
            f"\nsynthetic symbols (planted pattern): held-out direction accuracy {acc:.3f} "
            f"{'>=' if ok else '<'} 0.65 — {'the model learned the pattern' if ok else 'NOT LEARNED'}"
        )
    real = [s for s in table.index if s.startswith("sample:")]
    for s in real:
        r = table.loc[s]
        bar = max(r["dir_acc_persistence"], 0.5) + 2 * (0.25 / r["n"]) ** 0.5  # two standard errors
        verdict = (
            "beats persistence and a coin flip by more than two standard errors"
            if r["dir_acc"] > bar
            else "shows no reliable edge over persistence or a coin flip"
        )
        print(
            f"{s}: direction accuracy {r['dir_acc']:.3f} vs persistence {r['dir_acc_persistence']:.3f} "
            f"on {int(r['n'])} held-out windows — the model {verdict}"
        )
    print(
        "\nBacktest of the trained model on each symbol's held-out range, plus an unseen synthetic symbol "
        "(synthetic returns come from the planted pattern: they show the pipeline works, not a market edge)"
    )
    from pipelines.backtest.runner import BacktestJob

    # from each symbol's first held-out window; a symbol with none (all its data before the
    # one cut) has nothing unseen to backtest: its whole range trained the model
    jobs = [
        BacktestJob(k, r["holdout_start"]) for k, r in out["ranges"].items() if r["holdout_start"]
    ]
    skipped = [k for k, r in out["ranges"].items() if not r["holdout_start"]]
    if skipped:
        print(f"not backtested (no data after the hold-out cut {out['cut']}): {', '.join(skipped)}")
    jobs.append(BacktestJob(DEMO_UNSEEN_SYMBOL))
    bt_rc = cmd_backtest(cfg, checkpoint=out["checkpoint"]["path"], jobs=jobs)
    replay_ok = replay_phase(cfg, out["ranges"])
    if cfg.tracking.enabled:
        print("\nThe runs of each experiment in the MLflow UI (`make mlflow-ui` serves it):")
        for experiment in (cfg.run.name, cfg.run.name + "-backtest", cfg.run.name + "-live"):
            link = ui_link(cfg, experiment)
            if link:
                print(f"  {experiment}: {link}")
    return 0 if ok and bt_rc == 0 and replay_ok else 1


def replay_plan(
    frames: dict[str, pd.DataFrame], ranges: dict[str, dict[str, str]], candles: int
) -> dict[str, int]:
    """Per symbol with held-out bars, the replay start row: ``-k``, the last k = min(candles,
    bars at or after its first held-out window end) bars, so every replayed bar is unseen."""
    plan = {}
    for key, frame in frames.items():
        first = ranges.get(key, {}).get("holdout_start")
        if not first:
            continue  # all its data before the cut: it trained the model, nothing is unseen
        held = int(np.count_nonzero(frame.index >= pd.Timestamp(first)))
        if held >= 2:  # a prediction needs a next bar to settle against
            plan[key] = -min(candles, held)
    return plan


def persistence_direction(closes: np.ndarray) -> float:
    """Direction accuracy over ``closes`` of 'the next move repeats the last one', settled
    like a session's predictions (made at each bar but the last; flat moves not counted)."""
    from pipelines.model.direction import direction_accuracy

    moves = np.diff(closes)
    return direction_accuracy(moves[:-1], moves[1:])


def replay_phase(cfg: Config, ranges: dict[str, dict[str, str]]) -> bool:
    """Replay held-out bars to ``every_candle`` sessions; print their metrics and baselines."""
    import time

    import ray

    from actors import ModelClient, assign_host, host_call, start_hosts, stop_hosts
    from pipelines.cluster import init_ray
    from pipelines.data.candles import normalize_columns
    from pipelines.data.sources import load_candles, parse_symbol

    specs = {k: parse_symbol(k, cfg.data.timeframe) for k in ranges}
    frames = {k: normalize_columns(load_candles(s, cfg.data)) for k, s in specs.items()}
    plan = replay_plan(frames, ranges, DEMO_REPLAY_CANDLES)
    if not plan:
        print("\nno symbol has held-out bars to replay to live sessions")
        return True
    print(
        f"\nReplay of up to {DEMO_REPLAY_CANDLES} held-out bars per symbol to live sessions in "
        "every_candle mode (session hosts, speed 0): each candle predicted, settled, "
        "paper-traded and trained on once its label is final"
    )
    timeout = cfg.ray.call_timeout_s
    owns = init_ray(cfg)
    hosts: list[Any] = []
    client = None
    try:
        client = ModelClient.connect(cfg)  # restores the checkpoint just trained
        client.call("weights_version")
        hosts = start_hosts(cfg)
        loads = [0] * len(hosts)
        ids = []
        for key, start in plan.items():
            i = assign_host(key, loads)
            loads[i] += 1
            ref = hosts[i].start_session.remote(key, None, "every_candle", "replay", 0, start)
            ids.append((key, hosts[i], host_call(ref, "start_session", timeout)["id"]))
        deadline = time.monotonic() + DEMO_REPLAY_TIMEOUT_S
        while True:  # until every replay has ended and its training queue drained
            sts = ray.get([h.status.remote(sid) for _, h, sid in ids], timeout=timeout)
            stats = ray.get([h.stats.remote() for h in hosts], timeout=timeout)
            done = all(s["state"] == "finished" for s in sts) and not any(
                x["pending"] or x["in_flight"] for x in stats
            )
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        stop_hosts(hosts)
        if client is not None and not cfg.ray.detached:
            client.call("close", "FINISHED")
        if owns:
            ray.shutdown()
    rows = []
    for (key, _, _), st in zip(ids, sts, strict=True):
        closes = frames[key]["close"].to_numpy()[plan[key] :]
        rows.append((key, st["metrics"], persistence_direction(closes)))
    print(replay_table(rows))
    if not done:
        print(f"replay NOT finished within {DEMO_REPLAY_TIMEOUT_S:.0f}s (metrics so far above)")
    return done


def replay_table(rows: list[tuple[str, dict[str, Any], float]]) -> str:
    """The sessions' metrics beside the always-HOLD and persistence baselines."""

    def f(x: float) -> str:
        return "   -" if x != x else f"{x:.3f}"

    head = (
        f"{'symbol':<20}{'candles':>8}{'dir acc':>9}{'persist.':>9}{'paper PnL':>11}"
        f"{'trades':>7}{'win rate':>9}   train requested/done/dropped"
    )
    lines = [head]
    for key, m, persist in rows:
        lines.append(
            f"{key:<20}{m['candles']:>8}{f(m['direction_acc']):>9}{f(persist):>9}"
            f"{m['paper_pnl']:>+11.2f}{m['trades']:>7}{f(m['win_rate']):>9}   "
            f"{m['train_requested']}/{m['train_done']}/{m['train_dropped']}"
        )
    lines.append(
        "always-HOLD baseline: paper PnL +0.00 and 0 trades on every symbol (it never trades); "
        "persist.: direction accuracy of 'the next move repeats the last' on the same bars"
    )
    return "\n".join(lines)
