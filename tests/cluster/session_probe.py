"""A driver on the multi-node cluster for the session-host node-loss test (detached actors, so
they outlive it and the test can kill nodes while they run).

    python tests/cluster/session_probe.py ADDRESS OVERRIDES_JSON start SPEED CANDLES
    python tests/cluster/session_probe.py ADDRESS OVERRIDES_JSON status SESSION_ID
    python tests/cluster/session_probe.py ADDRESS OVERRIDES_JSON stop

``start``: the ModelActor (created if missing) and host 0, one replay session of the data's
first symbol playing its last CANDLES bars at SPEED candles/s; prints ``{"id": ...}``.
``status``: ``{"status": ...}`` of the session, or ``{"error": ...}`` while the host cannot
answer (restarting). ``stop``: the hosts stopped cleanly and the ModelActor killed.
"""

from __future__ import annotations

import json
import sys

import ray

from actors import ModelClient, find_hosts, start_hosts, stop_hosts
from pipelines.config import load_config
from pipelines.errors import CandlerayError


def main(address: str, overrides: list[str], what: str, args: list[str]) -> None:
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    cfg = load_config(None, overrides)
    try:
        if what == "start":
            speed, candles = float(args[0]), int(args[1])
            ModelClient.connect(cfg).call("weights_version")
            host = start_hosts(cfg)[0]
            st = ray.get(
                host.start_session.remote(
                    cfg.data.symbols[0], None, "none", "replay", speed, -candles, candles
                ),
                timeout=cfg.ray.call_timeout_s,
            )
            print(json.dumps({"id": st["id"]}))
        elif what == "status":
            host = find_hosts(cfg)[0]
            st = ray.get(host.status.remote(args[0]), timeout=30)
            print(json.dumps({"status": st}, default=str))
        elif what == "stop":
            stop_hosts(find_hosts(cfg))
            ray.kill(ModelClient.find(cfg).handle)
            print(json.dumps({"stopped": cfg.run.name}))
    except (CandlerayError, ray.exceptions.RayError, ValueError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4:])
