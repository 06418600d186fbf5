"""Annotations in the shared database of run.database_url; a bad URL fails at load."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest

from pipelines.data.annotations import Annotation, AnnotationStore, candle_loader, store_path
from pipelines.data.sources import parse_symbol
from pipelines.errors import ConfigError


def test_a_url_of_another_kind_fails_at_load_naming_the_setting(make_cfg):
    for bad in ("mysql://u:secret@db/x", "not a url"):
        with pytest.raises(ConfigError, match=r"run\.database_url") as err:
            make_cfg(f"run.database_url={bad}")
        assert "postgresql+psycopg://" in str(err.value) and "secret" not in str(err.value)


def test_annotations_live_in_the_shared_database(postgres_url, make_cfg):
    cfg = make_cfg(f"run.database_url={postgres_url}")
    where = store_path(cfg)
    assert "candleray-test-pw" not in str(where)
    load = candle_loader(cfg.data)
    candles = load(parse_symbol("synthetic:SYN0@1h", "1h"))
    note = uuid.uuid4().hex  # the database outlives this test: find our own rows by it
    a = Annotation.parse(
        symbol="synthetic:SYN0",
        timeframe="1h",
        side="long",
        entry_time=candles.index[40],
        entry_price=candles["close"].iat[40],
        exit_time=candles.index[50] + pd.Timedelta(minutes=10),
        exit_price=candles["close"].iat[50],
        note=note,
    )
    store = AnnotationStore(where, loader=load, tolerance=0.001)
    stored = store.add(a)
    other = AnnotationStore(store_path(cfg), loader=load, tolerance=0.001)  # another node
    mine = [x for x in other.find("synthetic:SYN0", "1h") if x.note == note]
    assert [x.to_dict() for x in mine] == [stored.to_dict()]
    assert stored.exit_time == candles.index[50]
    assert other.import_json(store.export_json()) and len(other.find()) == len(store.find())
    assert other.remove([stored.id]) == 1
    assert not [x for x in store.find() if x.note == note]


def test_annotations_on_an_unreachable_database_are_a_503_naming_the_setting(make_cfg):
    """POST /annotations while the server is down: the API answers 503 (the server's side is
    wrong, not the request) with the setting to check; nothing is stored anywhere else."""
    from support import free_port

    from pipelines.errors import DatabaseError
    from serve.api import STATUS

    url = f"postgresql+psycopg://candleray:pw@127.0.0.1:{free_port()}/candleray"
    cfg = make_cfg(f"run.database_url={url}")
    store = AnnotationStore(store_path(cfg), loader=candle_loader(cfg.data), tolerance=0.001)
    with pytest.raises(DatabaseError, match=r"run\.database_url") as err:
        store.find()
    assert next(code for cls, code in STATUS if isinstance(err.value, cls)) == 503
