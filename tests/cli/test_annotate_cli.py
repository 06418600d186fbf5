"""``candleray annotate ...`` and ``candleray train --annotations`` as a user runs them."""

from __future__ import annotations

import json
import re

import pytest
from support import tiny_overrides

from pipelines import cli
from pipelines.config import load_config
from pipelines.data.annotations import candle_loader
from pipelines.data.sources import parse_symbol


@pytest.fixture
def tiny(tmp_path) -> list[str]:
    return tiny_overrides(tmp_path, "annot")


@pytest.fixture
def candles(tiny):
    cfg = load_config(None, tiny)
    return candle_loader(cfg.data)(parse_symbol("synthetic:SYN0@1h", "1h"))


def add_args(candles, i: int, j: int, side: str = "long", *extra: str) -> list[str]:
    """``annotate add`` options for a trade from the close of bar i to the close of bar j."""
    fields = {
        "--symbol": "synthetic:SYN0",
        "--timeframe": "1h",
        "--side": side,
        "--entry-time": candles.index[i].isoformat(),
        "--entry-price": str(candles["close"].iat[i]),
        "--exit-time": candles.index[j].isoformat(),
        "--exit-price": str(candles["close"].iat[j]),
        **dict(zip(extra[::2], extra[1::2], strict=True)),
    }
    return [x for kv in fields.items() for x in kv]


def listed(tiny, capsys) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["annotate", "list", "--json", *tiny]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_add_list_export_remove_import(tiny, candles, capsys, tmp_path):
    assert (
        cli.main(["annotate", "add", *add_args(candles, 40, 48, "long", "--note", "dip"), *tiny])
        == 0
    )
    assert cli.main(["annotate", "add", *add_args(candles, 60, 64, "short"), *tiny]) == 0
    out = capsys.readouterr().out
    assert out.count("added ") == 2 and "synthetic:SYN0@1h  long" in out and "dip" in out
    items = listed(tiny, capsys)
    assert [a["side"] for a in items] == ["long", "short"]
    assert items[0]["entry_time"] == candles.index[40].isoformat()

    export = tmp_path / "marks.json"
    assert cli.main(["annotate", "export", "--file", str(export), *tiny]) == 0
    ids = [a["id"] for a in items]
    assert cli.main(["annotate", "remove", "--id", ids[0], "--id", ids[1], *tiny]) == 0
    assert listed(tiny, capsys) == []
    assert cli.main(["annotate", "import", "--file", str(export), *tiny]) == 0
    assert listed(tiny, capsys) == items


@pytest.mark.parametrize(
    "bad",
    [
        ["--side", "up"],  # not a side
        ["--entry-price"],  # no value
    ],
)
def test_bad_arguments_exit_2_before_anything_is_stored(tiny, candles, capsys, bad):
    args = add_args(candles, 40, 48)
    with pytest.raises(SystemExit) as exc:
        cli.main(["annotate", "add", *args[: len(args) - 2], *bad, *tiny])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["annotate", "remove", *tiny])  # --id is required
    assert exc.value.code == 2
    assert listed(tiny, capsys) == []


def test_refused_annotations_exit_2_with_the_reason(tiny, candles, capsys, tmp_path):
    high = candles["high"].iat[48]
    assert (
        cli.main(
            [
                "annotate",
                "add",
                *add_args(candles, 40, 48, "long", "--exit-price", str(high * 1.01)),
                *tiny,
            ]
        )
        == 2
    )
    assert "exit price" in capsys.readouterr().err
    assert cli.main(["annotate", "add", *add_args(candles, 48, 40), *tiny]) == 2
    assert "is not after entry" in capsys.readouterr().err
    assert (
        cli.main(
            ["annotate", "add", *add_args(candles, 40, 48, "long", "--entry-price", "abc"), *tiny]
        )
        == 2
    )
    assert "is not a number" in capsys.readouterr().err
    assert cli.main(["annotate", "import", "--file", str(tmp_path / "none.json"), *tiny]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli.main(["annotate", "remove", "--id", "nope", *tiny]) == 2
    assert listed(tiny, capsys) == []


def test_train_on_no_annotations_is_refused_before_anything_starts(tiny, capsys):
    assert cli.main(["train", "--annotations", *tiny]) == 2
    assert "no annotations in" in capsys.readouterr().err


@pytest.mark.ray
def test_train_on_annotations_checkpoints_and_tags_the_run(ray_cluster, tmp_path, candles, capsys):
    from mlflow.tracking import MlflowClient

    tiny = tiny_overrides(tmp_path, "annot-train")
    for i, j, side in ((40, 48, "long"), (100, 104, "short"), (200, 230, "long")):
        assert cli.main(["annotate", "add", *add_args(candles, i, j, side), *tiny]) == 0
    args = ["train", "--annotations", *tiny, "tracking.enabled=true", "annotations.epochs=2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "annotations: 3 trades on 1 symbol(s), 45 samples (39 HOLD, 3 BUY, 3 SELL)" in out
    assert "trained 6 steps (2 epochs) on annotations" in out  # 45 samples / 16 = 3 batches
    run_id = re.search(r"MLflow run (\w+) tagged training_kind=annotations", out).group(1)
    assert cli.main(["checkpoints", *tiny]) == 0
    kinds = {json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()}
    assert kinds == {"annotations"}
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    assert run.data.tags["candleray.training_kind"] == "annotations"
