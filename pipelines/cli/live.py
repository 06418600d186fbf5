"""``candleray live``: sessions on live or replayed candles, watched in the terminal.

    candleray live --symbols synthetic:SYN0,synthetic:SYN1 --timeframe 1h --mode every_candle \
        --source replay --speed 20 [--start -300] [--candles 200 [--json]]

Starts Ray, the ModelActor and the session hosts (``actors.hosts.host``), one session per
symbol (each on the least loaded host), and redraws a view of the last candles, the ghost
candle, the signal, the session metrics and the training queue in place until Ctrl-C, which
stops the sessions and the hosts cleanly. ``--candles N``: every session takes exactly N
candles (the host's ``max_candles``; a poll that brings more leaves the rest untaken), then the
command waits for the training those candles asked for (each sample trained or counted
dropped), stops and prints the final metrics (as JSON with ``--json``), pending samples
included: requested = done + dropped + pending. Arguments are checked before anything starts
(exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from typing import Any

from conf import Config
from pipelines.errors import InvalidInputError

SOURCES = ("replay", "ccxt")
# a host settles each training call within ray.call_timeout_s (done, failed or timed out):
# no sample settled for that long, plus this, means training is stuck, and --candles stops
DRAIN_STALL_MARGIN_S = 10.0


def register(sub: Any) -> None:
    from pipelines.live import MODES

    p = sub.add_parser("live", help="live sessions on replayed or exchange candles")
    p.add_argument(
        "--symbols", required=True, help="comma-separated, e.g. synthetic:SYN0,sample:EURUSD"
    )
    p.add_argument("--timeframe", default=None, help="default: data.timeframe")
    p.add_argument("--mode", default="none", choices=MODES)
    p.add_argument("--source", default="replay", choices=SOURCES)
    p.add_argument("--speed", type=float, default=10.0, help="replay: candles per second (0: max)")
    p.add_argument(
        "--start", default=None, help="replay: row (-300: the last 300) or time to play from"
    )
    p.add_argument(
        "--candles",
        type=int,
        default=None,
        help="stop after exactly N candles per session: each session takes N and no more, "
        "even when one exchange poll brings several",
    )
    p.add_argument("--json", action="store_true", help="with --candles: final metrics as JSON")


def check_args(cfg: Config, args: argparse.Namespace) -> tuple[list[str], Any]:
    """The symbol list and replay start, or InvalidInputError before anything starts."""
    from pipelines.data.sources import parse_symbol

    names = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if not names:
        raise InvalidInputError("--symbols is empty; give e.g. --symbols synthetic:SYN0")
    for n in names:
        parse_symbol(n, args.timeframe or cfg.data.timeframe)  # DataSourceError / ConfigError
    if not (math.isfinite(args.speed) and args.speed >= 0):
        raise InvalidInputError(f"--speed {args.speed} must be >= 0 candles per second")
    if args.candles is not None and args.candles < 1:
        raise InvalidInputError(f"--candles {args.candles} must be >= 1")
    if args.json and args.candles is None:
        raise InvalidInputError("--json prints the final metrics of --candles N; add --candles")
    start: Any = args.start
    if start is not None:
        with contextlib.suppress(ValueError):  # not a row number: a time, checked by the feed
            start = int(start)
    elif args.source == "replay" and args.candles is not None:
        start = -args.candles  # play the last N bars, warmed up on the ones before
    return names, start


def run(cfg: Config, args: argparse.Namespace) -> int:
    names, start = check_args(cfg, args)
    import ray

    from actors import ModelClient, assign_host, host_call, start_hosts, stop_hosts
    from actors.hosts.host import not_resumed_note
    from pipelines.cluster import init_ray

    owns = init_ray(cfg)
    hosts: list[Any] = []
    # held until the end: the ModelActor is this driver's, and an actor whose last handle goes
    # is gone (the hosts only find it, they never create it)
    client = ModelClient.connect(cfg)
    try:
        client.call("weights_version")
        hosts = start_hosts(cfg)
        note = not_resumed_note(hosts, cfg.ray.call_timeout_s)
        if note:
            print(note, file=sys.stderr)
        loads = [0] * len(hosts)
        ids: list[tuple[Any, str]] = []
        for n in names:
            i = assign_host(n, loads)
            loads[i] += 1
            st = host_call(
                hosts[i].start_session.remote(
                    n, args.timeframe, args.mode, args.source, args.speed, start, args.candles
                ),
                "start_session",
                cfg.ray.call_timeout_s,
            )
            ids.append((hosts[i], st["id"]))
        final = _watch(ids, hosts, args, cfg)
    except KeyboardInterrupt:
        final = None
        print("\nstopping", file=sys.stderr)
    finally:
        stop_hosts(hosts)
        if not cfg.ray.detached:  # ends the model's MLflow run, as candleray train does
            client.call("close", "FINISHED")
        if owns:
            ray.shutdown()
    if final is not None and args.candles is not None:
        if args.json:
            print(json.dumps(_clean(final), indent=2))
        else:
            for s in final:
                print(_line(s))
    from pipelines.cli.train import ui_link

    link = ui_link(cfg, cfg.run.name + "-live") if cfg.tracking.enabled else None
    if link:  # the sessions' runs; on stderr, so --json's stdout stays JSON
        print(f"MLflow UI: {link}", file=sys.stderr)
    return 0


def _watch(ids: list[tuple[Any, str]], hosts: list[Any], args: argparse.Namespace, cfg: Config):
    import ray

    tty = sys.stdout.isatty() and not args.json
    settled, settled_at = -1, time.monotonic()
    while True:
        sts = ray.get([h.status.remote(sid) for h, sid in ids], timeout=cfg.ray.call_timeout_s)
        stats = ray.get([h.stats.remote() for h in hosts], timeout=cfg.ray.call_timeout_s)
        if tty or args.candles is None:
            _draw(sts, stats, tty)
        if args.candles is not None and all(
            s["metrics"]["candles"] >= args.candles or s["state"] == "finished" for s in sts
        ):
            # every candle taken; the hosts are shut down after this, which would discard the
            # samples still queued or in flight: wait until each is trained or counted dropped
            m = [s["metrics"] for s in sts]
            pending = sum(x["train_pending"] for x in m)
            if pending == 0:
                return sts
            now_settled = sum(x["train_done"] + x["train_dropped"] for x in m)
            if now_settled != settled:
                settled, settled_at = now_settled, time.monotonic()
            elif time.monotonic() - settled_at > cfg.ray.call_timeout_s + DRAIN_STALL_MARGIN_S:
                print(
                    f"training made no progress for {cfg.ray.call_timeout_s:.0f}s "
                    f"(ray.call_timeout_s): stopping with {pending} sample(s) pending, not trained",
                    file=sys.stderr,
                )
                return sts
        time.sleep(0.5)


def _draw(sts: list[dict], stats: list[dict], tty: bool) -> None:
    out = ["\x1b[H\x1b[2J"] if tty else []
    for s in sts:
        out.append(_line(s))
        for c in s["last_candles"][-3:]:
            out.append(
                f"    {_t(c['time'])}  o {c['open']:.5g}  h {c['high']:.5g}  "
                f"l {c['low']:.5g}  c {c['close']:.5g}"
            )
        p = s["prediction"]
        if p:
            g = p["ghost"]
            out.append(
                f"  ghost {_t(p['target'])}  o {g['open']:.5g}  h {g['high']:.5g}  "
                f"l {g['low']:.5g}  c {g['close']:.5g}   signal {p['action']} "
                f"(p={max(p['probs'].values()):.2f}, weights v{p['version']})"
            )
    q = {
        k: sum(x[k] for x in stats) for k in ("queued", "requested", "done", "dropped", "timeouts")
    }
    out.append(
        "training queue: "
        + ", ".join(f"{k} {v}" for k, v in q.items())
        + f", in flight {sum(bool(x['in_flight']) for x in stats)}   (Ctrl-C stops)"
    )
    print("\n".join(out), flush=True)


def _t(ns: int) -> str:
    import pandas as pd

    return pd.Timestamp(ns, tz="UTC").strftime("%Y-%m-%d %H:%M")


def _line(s: dict) -> str:
    m = s["metrics"]
    return (
        f"{s['id']} [{s['mode']}] candles {m['candles']} predictions {m['predictions']} "
        f"dir acc {_f(m['direction_acc'])} (rolling {_f(m['direction_acc_rolling'])}) "
        f"paper PnL {m['paper_pnl']:+.2f} trades {m['trades']} win {_f(m['win_rate'])} "
        f"train {m['train_done']}/{m['train_requested']} dropped {m['train_dropped']} "
        f"pending {m['train_pending']} "
        f"trend {m['loss_trend']}"
    )


def _f(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _clean(x: Any) -> Any:
    """JSON without NaN/inf (they become null)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
