"""A driver on the multi-node cluster that asks the named ModelActor for its metrics, as any
process would (``ModelClient.find``); ``--kill`` ends it (a detached actor outlives its driver).

    python tests/cluster/model_probe.py ADDRESS OVERRIDES_JSON [--kill]

Prints one JSON line: ``{"metrics": ...}``, or ``{"error": ...}`` while the actor cannot answer.
"""

from __future__ import annotations

import json
import sys

import ray

from actors import ModelClient
from pipelines.config import load_config
from pipelines.errors import CandlerayError


def main(address: str, overrides: list[str], kill: bool) -> None:
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    cfg = load_config(None, overrides)
    try:
        client = ModelClient.find(cfg)
        if kill:
            ray.kill(client.handle)
            print(json.dumps({"killed": cfg.run.name}))
            return
        print(json.dumps({"metrics": client.call("metrics")}, default=str))
    except (CandlerayError, ray.exceptions.RayError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), "--kill" in sys.argv[3:])
