"""The predictor replica's logic without Serve: batching knobs, requests, one forward pass per
batch, weight swaps, and candles in / prices and signals out."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
import torch
from serve_harness import FakeBackend, asgi_call

from conf import ServeConfig
from conf.schema import SyntheticConfig
from pipelines.backtest.inference import all_windows
from pipelines.data.features import candle_targets, denormalise
from pipelines.data.sources.synthetic import generate
from pipelines.errors import CandlerayError, CandleValidationError, ConfigError, InvalidInputError
from pipelines.model.network import CandleTransformer, ModelSpec
from serve.api import BacktestIn, PredictIn, SessionIn, TrainingJobIn, _bars, build_api
from serve.batched import WeightFollower, check_request, predict_batch
from serve.config import Batching, deployment_options, ingress_options, parse_batching
from serve.predictor import Predictor
from serve.windows import interpret, model_input, model_input_from_values

SPEC = ModelSpec(n_features=5, window=8, d_model=16, n_heads=2, n_layers=1, dim_feedforward=32)


def windows(b: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, SPEC.window, SPEC.n_features)).astype(np.float32)


def state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return CandleTransformer(SPEC).state_dict()


# -- batching knobs ------------------------------------------------------------------------


def test_good_batching_values_are_taken_and_missing_ones_come_from_config():
    s = ServeConfig(max_batch_size=16, batch_wait_timeout_s=0.005, max_ongoing_requests=64)
    assert parse_batching({"max_batch_size": 32}, s) == Batching(32, 0.005)
    assert parse_batching({"batch_wait_timeout_s": 0}, s) == Batching(16, 0.0)
    assert parse_batching({}, s) == Batching.of(s)


@pytest.mark.parametrize(
    ("user_config", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size=0 must be >= 1"),
        ({"max_batch_size": 128}, "max_ongoing_requests=64 must be >= serve.max_batch_size=128"),
        ({"max_batch_size": 2.5}, "must be an integer"),
        ({"max_batch_size": True}, "must be an integer"),
        ({"max_batch_size": "8"}, "must be an integer"),
        ({"batch_wait_timeout_s": -0.1}, r"must be in \[0, 1\]"),
        ({"batch_wait_timeout_s": 5}, r"must be in \[0, 1\]"),
        ({"batch_wait_timeout_s": None}, "number of seconds"),
        ({"max_batch": 8}, r"unknown key\(s\) \['max_batch'\]"),
        ({"num_replicas": 3}, "Replicas, CPUs and GPUs change by redeploying"),
        ([8, 0.01], "must be a mapping"),
    ],
)
def test_bad_batching_values_are_refused_with_the_rule(user_config, message):
    with pytest.raises(ConfigError, match=message):
        parse_batching(user_config, ServeConfig())


def test_deployment_options_come_from_the_serve_section_and_are_checked():
    s = ServeConfig(replicas=3, replica_num_cpus=0.5, replica_num_gpus=1.0, max_batch_size=4)
    opts = deployment_options(s)
    assert opts["num_replicas"] == 3
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1.0}
    assert opts["user_config"] == {"max_batch_size": 4, "batch_wait_timeout_s": 0.0}
    with pytest.raises(ConfigError, match="serve.replicas=0"):
        deployment_options(dataclasses.replace(s, replicas=0))
    ingress = ingress_options(ServeConfig(ingress_replicas=4, ingress_num_cpus=0.5))
    assert ingress == {"num_replicas": 4, "ray_actor_options": {"num_cpus": 0.5}}
    with pytest.raises(ConfigError, match="serve.ingress_replicas=0"):
        ingress_options(ServeConfig(ingress_replicas=0))


def test_the_topology_is_single_by_default_and_a_bad_one_names_both():
    from pipelines.config import load_config
    from serve.app import model_deployment
    from serve.config import model_ingress_options

    cfg = load_config(None, ["serve.replicas=3", "serve.replica_num_gpus=1"], resolve_paths=False)
    assert cfg.serve.topology == "single" and model_deployment(cfg.serve) == "Ingress"
    # in single the ingress holds the model: it takes the predictor's replicas and resources
    assert model_ingress_options(cfg.serve) == deployment_options(cfg.serve)
    assert model_ingress_options(cfg.serve)["num_replicas"] == 3
    composed = load_config(None, ["serve.topology=composed"], resolve_paths=False)
    assert model_deployment(composed.serve) == "BatchedPredictor"
    with pytest.raises(ConfigError, match="serve.topology='mesh' must be 'single'.*'composed'"):
        load_config(None, ["serve.topology=mesh"], resolve_paths=False)
    with pytest.raises(ConfigError, match="serve.predictor_transport='http' must be 'ray'.*'grpc'"):
        load_config(None, ["serve.predictor_transport=http"], resolve_paths=False)


# -- requests and batches ------------------------------------------------------------------


def test_bad_requests_are_refused_with_what_was_wrong():
    with pytest.raises(InvalidInputError, match=r"shape \(2, 8, 3\).*\(B, 8, 5\)"):
        check_request(SPEC, windows(2)[:, :, :3], 10**6)
    with pytest.raises(InvalidInputError, match="shape"):
        check_request(SPEC, windows(1)[0], 10**6)  # one window without the batch axis
    bad = windows(3)
    bad[1, 2, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN or infinite values.*sample 1"):
        check_request(SPEC, bad, 10**6)
    with pytest.raises(InvalidInputError, match="must be numbers"):
        check_request(SPEC, [["a"]], 10**6)
    with pytest.raises(InvalidInputError, match="serve.max_request_bytes"):
        check_request(SPEC, windows(100), 1000)
    assert check_request(SPEC, windows(2).astype(np.float64), 10**6).dtype == np.float32


def test_a_batch_of_requests_is_one_forward_pass_with_the_unbatched_answers():
    p = Predictor(SPEC, "cpu")
    p.load(state(1), 7, "gen")
    calls: list[int] = []
    p.model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    reqs = [windows(1, 1), windows(3, 2), windows(2, 3)]
    answers = predict_batch(p, reqs, "r1", 5)
    assert calls == [6]  # one forward pass over all six windows
    assert [len(a) for a in answers] == [1, 3, 2]
    for req, ans in zip(reqs, answers, strict=True):
        alone = p.predict(req)
        np.testing.assert_allclose([a.candle for a in ans], alone.candle, atol=1e-5)
        np.testing.assert_allclose([a.probs for a in ans], alone.probs, atol=1e-6)
        assert {
            (a.version, a.generation, a.replica, a.forward_pass, a.batch_windows) for a in ans
        } == {(7, "gen", "r1", 5, 6)}


# -- weight swaps --------------------------------------------------------------------------


class Source:
    """A ModelActor stand-in: publishes (generation, version) and state dicts."""

    def __init__(self, spec: ModelSpec = SPEC) -> None:
        self.generation, self.published, self.spec = "g1", 0, spec
        self.state = state(0)
        self.snapshots = 0
        self.fail: Exception | None = None

    def publish(self, seed: int) -> None:
        self.published += 1
        self.state = state(seed)

    async def version(self) -> tuple[str, int]:
        if self.fail:
            raise self.fail
        return self.generation, self.published

    async def snapshot(self) -> dict:
        self.snapshots += 1
        return {
            "generation": self.generation,
            "version": self.published,
            "spec": self.spec.to_dict(),
            "state": self.state,
        }


def test_a_new_version_is_swapped_in_whole_and_a_running_batch_keeps_its_weights():
    src = Source()
    f = WeightFollower(SPEC, "cpu", src)
    x = windows(4)

    async def scenario():
        assert await f.refresh() is True and f.predictor.version == 0
        assert await f.refresh() is False and src.snapshots == 1  # same version: no fetch
        in_flight = f.predictor  # what a batch that started now holds
        before = in_flight.predict(x).probs
        src.publish(seed=5)
        assert await f.refresh() is True
        return in_flight, before

    in_flight, before = asyncio.run(scenario())
    assert f.predictor is not in_flight and f.predictor.version == 1
    np.testing.assert_array_equal(in_flight.predict(x).probs, before)  # untouched by the swap
    fresh = Predictor(SPEC, "cpu")
    fresh.load(state(5), 1)
    np.testing.assert_allclose(f.predictor.predict(x).probs, fresh.predict(x).probs, atol=1e-6)


def test_a_failed_poll_keeps_serving_the_loaded_weights_and_says_why():
    src = Source()
    f = WeightFollower(SPEC, "cpu", src)

    async def scenario():
        await f.refresh()
        src.fail = ConnectionError("actor restarting")
        task = asyncio.create_task(f.follow(0.01))
        await asyncio.sleep(0.05)
        assert f.predictor.version == 0 and "actor restarting" in (f.last_error or "")
        src.fail = None
        src.publish(seed=2)
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(scenario())
    assert f.predictor.version == 1 and f.last_error is None


def test_weights_of_another_model_shape_are_refused():
    other = dataclasses.replace(SPEC, d_model=32)
    f = WeightFollower(SPEC, "cpu", Source(other))
    with pytest.raises(CandlerayError, match="was built for"):
        asyncio.run(f.refresh())
    assert f.predictor.version == -1


# -- candles in, prices and signal out -----------------------------------------------------


def test_served_input_equals_the_training_window_for_the_same_bar():
    df = generate("S", "1h", SyntheticConfig(length=200))
    full = all_windows(df, "1h", ("4h",), 16)
    for end in (60, 120, 199):
        mi = model_input(df.iloc[: end + 1], 16, "1h", ("4h",))
        m = int(np.flatnonzero(full.ends == end)[0])
        np.testing.assert_array_equal(mi.x[0], full.x[m])
        assert mi.sigma == full.sigma[m] and mi.end == df.index[end]
        assert mi.anchor_close == df["close"].iloc[end]


def request_body(df, zone: str = "") -> str:
    """The candles as a client sends them: ISO times (UTC, written in ``zone``), prices."""
    rows = []
    for t, (o, h, lo, c, v) in zip(df.index, df.to_numpy().tolist(), strict=True):
        stamp = t.tz_convert(zone).isoformat() if zone else t.tz_localize(None).isoformat()
        rows.append(
            f'{{"time":"{stamp}","open":{o!r},"high":{h!r},"low":{lo!r},'
            f'"close":{c!r},"volume":{v!r}}}'
        )
    return '{"candles":[' + ",".join(rows) + "]}"


@pytest.mark.parametrize("zone", ["", "UTC", "Asia/Kolkata", "America/New_York"])
def test_a_request_body_gives_the_training_window(zone):
    """A JSON window of candles (times with no zone = UTC, or any offset) → the exact window
    training builds for that bar, through the array path the ingress takes."""
    df = generate("S", "1h", SyntheticConfig(length=200))
    full = all_windows(df, "1h", ("4h",), 16)
    for end in (60, 199):
        body = PredictIn.model_validate_json(request_body(df.iloc[end - 39 : end + 1], zone))
        bars = _bars(body.candles or [])
        np.testing.assert_array_equal(
            bars.times_ns, df.index[end - 39 : end + 1].as_unit("ns").asi8
        )
        mi = model_input_from_values(*bars, 16, "1h", ("4h",))
        framed = model_input(df.iloc[end - 39 : end + 1], 16, "1h", ("4h",))
        m = int(np.flatnonzero(full.ends == end)[0])
        np.testing.assert_array_equal(mi.x[0], full.x[m])
        assert (mi.sigma, mi.end, mi.next_time) == (
            full.sigma[m],
            df.index[end],
            df.index[end] + pd.Timedelta("1h"),
        )
        assert (mi.anchor_close, mi.log_volume_mean) == (
            framed.anchor_close,
            framed.log_volume_mean,
        )


@pytest.mark.parametrize(
    ("row", "col", "value", "rule"),
    [(5, 1, 1e-9, "high-covers-open-close"), (7, 4, -1.0, "volume-non-negative")],
)
def test_arrays_are_refused_by_the_frame_rules(row, col, value, rule):
    df = generate("S", "1h", SyntheticConfig(length=40))
    times, values = df.index.as_unit("ns").asi8.copy(), df.to_numpy().copy()
    values[row, col] = value
    with pytest.raises(CandleValidationError, match=f"row {row} .*'{rule}'"):
        model_input_from_values(times, values, 16, "1h", symbol="S")
    times[9] = times[8]
    values = df.to_numpy()
    with pytest.raises(CandleValidationError, match="row 9 .*'unique-timestamps'"):
        model_input_from_values(times, values, 16, "1h", symbol="S")
    with pytest.raises(InvalidInputError, match="10 candles given"):
        model_input_from_values(df.index.as_unit("ns").asi8[:10], values[:10], 16, "1h")


def test_bad_candles_are_refused_before_the_model():
    df = generate("S", "1h", SyntheticConfig(length=40))
    with pytest.raises(InvalidInputError, match="10 candles given.*windows of 16"):
        model_input(df.iloc[:10], 16, "1h")
    broken = df.copy()
    broken.iloc[5, 3] = np.nan
    with pytest.raises(CandleValidationError, match="row 5"):
        model_input(broken, 16, "1h", symbol="S")


def test_the_true_next_candle_as_an_answer_gives_back_that_candle():
    """The model's targets for a bar (``candle_targets``) read back as prices and volume."""
    df = generate("S", "1h", SyntheticConfig(length=100))
    end = 70
    mi = model_input(df.iloc[: end + 1], 16, "1h")
    target = candle_targets(df, 16, np.array([end]), np.array([mi.sigma]))[0]
    s = interpret(target, [0.2, 0.7, 0.1], mi, confidence=0.5)
    nxt = df.iloc[end + 1]
    assert s.time == df.index[end + 1]
    for k in ("open", "high", "low", "close", "volume"):
        assert s.ghost[k] == pytest.approx(nxt[k], rel=1e-5), k


def test_an_answer_becomes_a_ghost_candle_in_prices_and_a_signal_by_the_confidence_rule():
    df = generate("S", "1h", SyntheticConfig(length=40))
    mi = model_input(df, 16, "1h")
    candle = [0.5, 1.0, -1.0, 0.8, 0.1]
    s = interpret(candle, [0.2, 0.7, 0.1], mi, confidence=0.5)
    ghost = denormalise(np.array([candle]), np.array([mi.anchor_close]), np.array([mi.sigma]))[0]
    assert [s.ghost[k] for k in ("open", "high", "low", "close")] == pytest.approx(list(ghost))
    assert s.ghost["close"] == pytest.approx(df["close"].iloc[-1] * np.exp(0.8 * mi.sigma))
    assert s.probs == pytest.approx({"HOLD": 0.2, "BUY": 0.7, "SELL": 0.1})
    assert (s.action, s.signal) == ("BUY", 1)
    unsure = interpret(candle, [0.3, 0.25, 0.45], mi, confidence=0.5)
    assert (unsure.action, unsure.signal) == ("HOLD", 0)  # SELL is likeliest but below 0.5
    sure = interpret(candle, [0.3, 0.25, 0.45], mi, confidence=0.4)
    assert (sure.action, sure.signal) == ("SELL", -1)


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (BacktestIn, {"symbols": ["sample:EURUSD"], "until": 0.0}, "until"),
        (BacktestIn, {"symbols": ["sample:EURUSD"], "since": "1700000000"}, "since"),
        (PredictIn, {"symbol": "sample:EURUSD", "end": 1_700_000_000}, "end"),
        (TrainingJobIn, {"kind": "history", "epochs": 1.0}, "epochs"),
        (TrainingJobIn, {"kind": "history", "epochs": True}, "epochs"),
        (SessionIn, {"symbol": "sample:EURUSD", "mode": "none", "speed": "5"}, "speed"),
    ],
)
def test_request_fields_take_only_their_own_json_type(model, body, field):
    """A number or numeric text is not a time (it was read as seconds since 1970), nor 1.0 or
    true an integer, nor text a number: each is refused naming the field."""
    with pytest.raises(ValueError) as err:  # pydantic's ValidationError is a ValueError
        model.model_validate_json(json.dumps(body))
    assert field in str(err.value)


def test_request_times_are_iso_text_with_or_without_a_zone():
    ok = BacktestIn.model_validate_json(
        '{"symbols": ["s"], "since": "2024-01-01", "until": "2024-02-01T00:00:00Z"}'
    )
    assert ok.since == dt.datetime(2024, 1, 1) and ok.until.tzinfo is not None
    assert TrainingJobIn.model_validate_json('{"kind": "history", "epochs": 3}').epochs == 3
    assert SessionIn.model_validate_json('{"symbol": "s", "mode": "none", "speed": 5}').speed == 5.0


# -- bounds: nothing a body or query can carry gets a 500 ------------------------------------


def _api():
    backend = FakeBackend()
    return build_api(backend, ServeConfig()), backend


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_non_finite_number_is_a_422_naming_the_field(literal):
    app, backend = _api()
    body = f'{{"symbol": "synthetic:SYN0", "mode": "none", "speed": {literal}}}'.encode()
    reply, _ = asgi_call(app, "POST", "/sessions", body)
    assert reply.status == 422, reply.body
    (error,) = reply.json()["detail"]
    assert error["loc"] == ["body", "speed"] and "finite" in error["msg"]
    assert backend.calls == []
    bare, _ = asgi_call(app, "POST", "/sessions", literal.encode())  # a body that is only NaN
    assert bare.status == 422


def _window(year: int, n: int = 40) -> bytes:
    t0 = dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc)
    candles = [
        {
            "time": (t0 + dt.timedelta(hours=i)).isoformat(),
            "open": 100.0,
            "high": 101.0,
            "low": 99.0,
            "close": 100.5,
            "volume": 10.0,
        }
        for i in range(n)
    ]
    return json.dumps({"candles": candles}).encode()


@pytest.mark.parametrize(
    ("method", "path", "body", "query", "field"),
    [
        ("POST", "/predict", _window(2300), "", "time"),
        ("POST", "/predict", _window(1000), "", "time"),
        ("POST", "/predict", b'{"symbol": "s", "end": "9999-01-01T00:00:00Z"}', "", "end"),
        ("GET", "/sessions/s-1/chart", None, "since=9999-01-01T00:00:00Z", "since"),
        ("GET", "/sessions/s-1/chart", None, "since=0001-01-01T00:00:00Z", "since"),
        (
            "POST",
            "/sessions",
            b'{"symbol": "s", "mode": "none", "timeframe": "99999w"}',
            "",
            "timeframe",
        ),
        ("POST", "/backtests", b'{"symbols": ["s"], "until": "2262-06-01"}', "", "until"),
        (
            "POST",
            "/annotations",
            b'{"symbol": "s", "timeframe": "99999w", "side": "long", '
            b'"entry_time": "2024-01-01T00:00:00Z", "entry_price": 1.0, '
            b'"exit_time": "2024-01-02T00:00:00Z", "exit_price": 1.1}',
            "",
            "timeframe",
        ),
    ],
)
def test_times_and_timeframes_past_the_candle_clock_are_a_422_with_the_range(
    method, path, body, query, field
):
    app, backend = _api()
    reply, _ = asgi_call(app, method, path, body, query=query)
    assert reply.status == 422, reply.body
    errors = reply.json()["detail"]
    assert any(e["loc"][-1] == field for e in errors), errors
    assert any("1678-01-01" in e["msg"] or "52w" in e["msg"] for e in errors), errors
    assert backend.calls == []
    ok, _ = asgi_call(app, "POST", "/predict", _window(2024))
    assert ok.status == 200
