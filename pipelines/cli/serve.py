"""``candleray serve``: Ray, the ModelActor, the session hosts and the Serve app (REST API +
dashboard) on ``serve.host:serve.port``; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import argparse
import time
from typing import Any

from conf import Config


def register(sub: Any) -> None:
    sub.add_parser(
        "serve",
        help="serve the REST API and the dashboard (http://127.0.0.1:8000 by default; Ctrl-C stops)",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    from serve.security import check_security

    # before anything starts: a refused bind must not leave Ray or actors behind
    check_security(cfg.serve)

    import ray
    from ray import serve

    from actors import ModelClient
    from actors.hosts.host import not_resumed_note, start_hosts, stop_hosts
    from actors.jobs import job_board
    from pipelines.cluster import init_ray
    from serve.app import start

    owns_ray = init_ray(cfg)
    client = None
    hosts: list[Any] = []
    try:
        client = ModelClient.connect(cfg)
        metrics = client.call("metrics")
        hosts = start_hosts(cfg)
        note = not_resumed_note(hosts, cfg.ray.call_timeout_s)
        if note:
            print(note, flush=True)
        # held for the app's lifetime: a board that is not detached ends with its last handle
        _board = job_board(cfg)
        start(cfg)
        url = f"http://{cfg.serve.host}:{cfg.serve.port}/"
        print(
            f"model {cfg.run.name!r} at step {metrics['steps']}, {len(hosts)} session host(s)\n"
            f"dashboard: {url}   API docs: {url}docs   (Ctrl-C stops)",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping: Serve app, session hosts, ModelActor", flush=True)
    finally:
        if ray.is_initialized():
            serve.shutdown()
            if not cfg.ray.detached:
                stop_hosts(hosts, cfg.ray.call_timeout_s)
                if client is not None:
                    client.call("close", "FINISHED")
        if owns_ray:
            ray.shutdown()
    return 0
