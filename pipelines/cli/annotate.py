"""``candleray annotate add|list|remove|export|import``: trades a person marked on the chart.

    candleray annotate add --symbol sample:EURUSD --timeframe 1h --side long \\
        --entry-time 2018-01-03T10:00Z --entry-price 1.2030 \\
        --exit-time 2018-01-04T15:00Z --exit-price 1.2105 --note "breakout"
    candleray annotate list [--symbol S] [--timeframe TF] [--json]
    candleray annotate remove --id ID [--id ID ...]
    candleray annotate export [--file out.json]        (stdout without --file)
    candleray annotate import --file in.json           (all or nothing)

Options and config overrides come after the action. Every annotation is checked against
its candles before anything is stored (``pipelines.data.annotations``); a refusal or a bad
argument exits with code 2 and stores nothing. Train on them with
``candleray train --annotations``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from conf import Config
from pipelines.data.annotations import SIDES


def register(sub: Any) -> None:
    from pipelines.cli.parser import add_common  # the parser module imports this one

    p = sub.add_parser("annotate", help="mark trades on candles: add, list, remove, export, import")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = acts.add_parser("add", help="check a marked trade against its candles and store it")
    add.add_argument("--symbol", required=True, help="source:SYMBOL, e.g. sample:EURUSD")
    add.add_argument("--timeframe", required=True, help="the candles it was marked on, e.g. 1h")
    add.add_argument("--side", required=True, choices=SIDES)
    for leg in ("entry", "exit"):
        add.add_argument(f"--{leg}-time", required=True, help="ISO 8601; UTC if no zone")
        add.add_argument(f"--{leg}-price", required=True, help="within the candle's low-high")
    add.add_argument("--note", default="")
    for name, help_ in (("list", "list stored annotations"), ("export", "write them as JSON")):
        q = acts.add_parser(name, help=help_)
        q.add_argument("--symbol", default=None, help="only this symbol (source:SYMBOL)")
        q.add_argument("--timeframe", default=None, help="only this timeframe")
        if name == "list":
            q.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            q.add_argument("--file", default="-", help="output file (default: stdout)")
    rm = acts.add_parser("remove", help="remove annotations by id")
    rm.add_argument("--id", dest="ids", action="append", required=True, help="repeatable")
    imp = acts.add_parser("import", help="add the annotations of a JSON export (all or nothing)")
    imp.add_argument("--file", required=True)
    for q in acts.choices.values():
        add_common(q)
    # the nested parsers own the overrides: the outer (empty) positional must not replace them
    p.set_defaults(overrides=argparse.SUPPRESS)


def _row(a: Any) -> str:
    return (
        f"{a.id}  {a.symbol}@{a.timeframe}  {a.side:<5}  {a.entry_time:%Y-%m-%d %H:%M} "
        f"{a.entry_price:.6g} -> {a.exit_time:%Y-%m-%d %H:%M} {a.exit_price:.6g}"
        + (f"  {a.note}" if a.note else "")
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.data.annotations import Annotation, AnnotationStore, candle_loader, store_path
    from pipelines.errors import AnnotationError

    store = AnnotationStore(
        store_path(cfg),
        loader=candle_loader(cfg.data),
        tolerance=cfg.annotations.price_tolerance,
    )
    if args.action == "add":
        a = store.add(
            Annotation.parse(
                symbol=args.symbol,
                timeframe=args.timeframe,
                side=args.side,
                entry_time=args.entry_time,
                entry_price=args.entry_price,
                exit_time=args.exit_time,
                exit_price=args.exit_price,
                note=args.note,
            )
        )
        print(f"added {_row(a)}")
    elif args.action == "list":
        items = store.find(args.symbol, args.timeframe)
        for a in items:
            print(json.dumps(a.to_dict()) if args.json else _row(a))
        if not args.json:
            print(f"{len(items)} annotation(s) in {store.path}", file=sys.stderr)
    elif args.action == "remove":
        print(f"removed {store.remove(args.ids)} annotation(s)")
    elif args.action == "export":
        text = store.export_json(args.symbol, args.timeframe)
        if args.file == "-":
            print(text)
        else:
            Path(args.file).write_text(text + "\n")
            print(f"exported {len(json.loads(text)['annotations'])} annotation(s) to {args.file}")
    else:  # import
        try:
            text = Path(args.file).read_text()
        except OSError as exc:
            raise AnnotationError(f"cannot read {args.file}: {exc}; give an export file") from exc
        print(f"imported {len(store.import_json(text))} annotation(s) from {args.file}")
    return 0
