"""Checkpoints and the candle cache on a real S3 server (moto on 127.0.0.1): what lands in the
bucket, listed with boto3 as an operator would."""

from __future__ import annotations

import json
import uuid

import boto3
import pandas as pd
import pytest
import torch
from fake_exchange import FakeBinance

from pipelines.data.sources.cache import CandleCache
from pipelines.errors import StorageError
from pipelines.model.checkpoints import CheckpointStore

START = pd.Timestamp("2024-01-01", tz="UTC")


def keys(bucket, prefix: str) -> list[str]:
    s3 = boto3.Session().client("s3", endpoint_url=bucket.endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_checkpoints_on_s3_keep_the_newest_and_load_back(s3_bucket):
    prefix = f"ckpt-{uuid.uuid4().hex[:8]}"
    store = CheckpointStore(f"{s3_bucket.url}/{prefix}", keep_last=2)
    for step in (5, 10, 15):
        store.save({"w": torch.full((3,), float(step))}, {"step": step, "kind": "batch"})
    names = [k.rsplit("/", 1)[-1] for k in keys(s3_bucket, prefix)]
    # two checkpoints, each its .pt and its sidecar; nothing temporary left behind
    assert len(names) == 4 and not any(".tmp" in n for n in names), names
    assert sorted(n.split("-step")[1][:9] for n in names) == ["000000010"] * 2 + ["000000015"] * 2
    # another process (a restarted actor) opens the same URI and restores the newest
    other = CheckpointStore(f"{s3_bucket.url}/{prefix}")
    state, meta = other.load_latest_good()
    assert meta["step"] == 15 and torch.equal(state["w"], torch.full((3,), 15.0))
    # what the listing shows (`candleray checkpoints`) is a URI that loads anywhere
    listed = [i.path for i in other.list()]
    assert all(p.startswith(f"{s3_bucket.url}/{prefix}/ckpt-") for p in listed), listed
    state, meta = CheckpointStore(listed[0].rsplit("/", 1)[0]).load(listed[0])
    assert meta["step"] == 10 and torch.equal(state["w"], torch.full((3,), 10.0))


def test_candle_cache_round_trips_on_s3_and_a_failed_write_keeps_the_old_object(s3_bucket):
    root = f"{s3_bucket.url}/cache-{uuid.uuid4().hex[:8]}"
    frame = FakeBinance(start=START, bars=10).expected("BTCUSDT", 0, 9)
    cache = CandleCache(root)
    where = cache.write("binance", "BTC/USDT", "1h", frame.iloc[:5])
    assert keys(s3_bucket, root.split("/", 3)[3]) == [str(where).split("/", 1)[1]]
    pd.testing.assert_frame_equal(
        CandleCache(root).read("binance", "BTC/USDT", "1h"), frame.iloc[:5]
    )

    def crash(df: pd.DataFrame, tmp) -> None:
        tmp.write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt  # even an interrupt must not leave a broken object

    with pytest.raises(KeyboardInterrupt):
        CandleCache(root, writer=crash).write("binance", "BTC/USDT", "1h", frame)
    pd.testing.assert_frame_equal(
        CandleCache(root).read("binance", "BTC/USDT", "1h"), frame.iloc[:5]
    )
    merged = CandleCache.merge(cache.read("binance", "BTC/USDT", "1h"), frame)
    cache.write("binance", "BTC/USDT", "1h", merged)
    pd.testing.assert_frame_equal(CandleCache(root).read("binance", "BTC/USDT", "1h"), frame)
    assert cache.read("binance", "ETH/USDT", "1h").empty


def test_candle_cache_in_a_missing_bucket_names_data_cache_dir(s3_bucket):
    with pytest.raises(
        StorageError, match=r"data\.cache_dir=s3://no-such-bucket/c.*create the bucket"
    ):
        CandleCache("s3://no-such-bucket/c")


def test_backtest_report_written_to_s3_reads_back_whole(s3_bucket, make_cfg):
    from actors import spec_from_config
    from pipelines.backtest.report import write_json
    from pipelines.backtest.runner import jobs_for, run_in_process
    from pipelines.backtest.weights import BacktestWeights
    from pipelines.model.trainer import Trainer

    cfg = make_cfg("model.device=cpu")
    spec = spec_from_config(cfg)
    weights = Trainer(spec, cfg.train, torch.device("cpu"), seed=3).weights_cpu()
    run = run_in_process(
        jobs_for(["synthetic:SYN0"], cfg),
        BacktestWeights(spec, weights, "test", "random", 0, cfg.data.extra_timeframes),
        cfg,
    )
    key = f"reports-{uuid.uuid4().hex[:8]}/r.json"
    assert write_json(run, cfg, f"{s3_bucket.url}/{key}") == f"{s3_bucket.url}/{key}"
    s3 = boto3.Session().client("s3", endpoint_url=s3_bucket.endpoint)
    report = json.loads(s3.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())
    assert [s["symbol"] for s in report["symbols"]] == ["synthetic:SYN0@1h"]
    assert report["config"]["run"]["name"] == cfg.run.name
