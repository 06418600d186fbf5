"""``candleray config``: print the resolved configuration as YAML."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from conf import Config, to_dict


def register(sub: Any) -> None:
    sub.add_parser("config", help="print the resolved configuration")


def run(cfg: Config, args: argparse.Namespace) -> int:
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return 0
