"""The ``candleray`` parser and entry point. Config is loaded once here and passed down explicitly.

Each command is a module with ``register(subparsers)`` and ``run(cfg, args) -> exit code``.
Ctrl-C and SIGTERM stop every command alike (``pipelines.cli.signals``): a command cleans up in
its ``finally`` blocks; one that does not catch the stop exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from pipelines.cli import annotate, backtest, checkpoints, config, demo, live, serve, sweep, train
from pipelines.cli.signals import exit_code, stop_on_signals
from pipelines.config import load_config
from pipelines.errors import CandlerayError

COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "demo": demo,
    "backtest": backtest,
    "checkpoints": checkpoints,
    "annotate": annotate,
    "live": live,
    "serve": serve,
    "config": config,
    "sweep": sweep,
}

# the profile a command loads when --profile is not given
DEFAULT_PROFILE = {"demo": "demo"}


def add_common(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--profile", default=None, help="conf/profiles/<name>.yaml or a path to a YAML file"
    )
    s.add_argument(
        "overrides",
        nargs="*",
        help="section.key=value, e.g. model.d_model=128 'data.symbols=[EUR/USD]'",
    )
    s.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="candleray", description="Train, serve and backtest an OHLCV transformer on Ray."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.register(sub)
    for s in sub.choices.values():
        add_common(s)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with stop_on_signals():
        try:
            cfg = load_config(args.profile or DEFAULT_PROFILE.get(args.command), args.overrides)
            return int(COMMANDS[args.command].run(cfg, args))
        except CandlerayError as exc:
            print(f"candleray: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM; the command cleaned up
            print(f"candleray: {args.command} stopped ({exc or 'SIGINT'})", file=sys.stderr)
            return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
