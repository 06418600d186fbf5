"""``candleray checkpoints``: list the model's checkpoints, one JSON record a line."""

from __future__ import annotations

import argparse
import json
from typing import Any

from conf import Config


def register(sub: Any) -> None:
    sub.add_parser("checkpoints", help="list the model's checkpoints")


def run(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.model.checkpoints import CheckpointStore

    for info in CheckpointStore(
        f"{cfg.checkpoint.uri}/{cfg.run.name}", cfg.checkpoint.keep_last
    ).list():
        print(json.dumps(info.to_dict()))
    return 0
