import json
import os

import pytest
import torch

from pipelines.errors import CheckpointError
from pipelines.model.checkpoints import CheckpointStore


def state(step):
    return {
        "model": {"w": torch.full((3,), float(step))},
        "step": step,
        "history": [{"total_loss": 1.0}],
    }


def save(store, step, best=False):
    return store.save(
        state(step),
        {
            "step": step,
            "kind": "batch",
            "is_best": best,
            "metrics": {"total_loss": 1.0 / step},
            "config": {"a": 1},
        },
    )


def test_atomic_write_leaves_no_temp_files_and_metadata(tmp_path):
    store = CheckpointStore(str(tmp_path), keep_last=3)
    info = save(store, 10)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000010.json", "ckpt-000000010.pt"]
    meta = json.loads((tmp_path / "ckpt-000000010.json").read_text())
    assert meta["kind"] == "batch" and meta["config"] == {"a": 1} and len(meta["sha256"]) == 64
    st, _ = store.load(info.path)
    assert st["step"] == 10 and torch.equal(st["model"]["w"], torch.full((3,), 10.0))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path), keep_last=3)
    save(store, 10)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store.fs, "mv", boom)
    with pytest.raises(CheckpointError, match="disk full"):
        save(store, 20)
    monkeypatch.undo()
    assert [i.step for i in store.list()] == [10]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert store.load_latest_good()[0]["step"] == 10


def test_retention_keeps_last_k_and_the_best(tmp_path):
    store = CheckpointStore(str(tmp_path), keep_last=2)
    save(store, 10)
    save(store, 20, best=True)
    for s in (30, 40, 50):
        save(store, s)
    assert [i.step for i in store.list()] == [20, 40, 50]
    assert store.best().step == 20
    save(store, 60, best=True)
    assert [i.step for i in store.list()] == [50, 60]


def test_corrupt_newest_is_skipped_with_a_warning(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path), keep_last=5)
    save(store, 10)
    newest = save(store, 20)
    with open(newest.path, "r+b") as f:  # truncate: a crash mid-copy on a shared filesystem
        f.truncate(100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        store.load(newest.path)
    st, meta = store.load_latest_good()
    assert st["step"] == 10 and meta["step"] == 10
    assert "skipping checkpoint" in caplog.text


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that carries arbitrary objects does not load."""
    store = CheckpointStore(str(tmp_path), keep_last=5)
    info = store.save({"evil": CheckpointStore}, {"step": 1})
    with pytest.raises(CheckpointError, match="unpickled safely"):
        store.load(info.path)


def test_after_a_rewind_the_newest_written_checkpoint_is_restored(tmp_path):
    """Checkpoints are ordered by when they were written: after load_checkpoint(200) and more
    training, the abandoned 400 is the oldest, pruned first, and never restored."""
    store = CheckpointStore(str(tmp_path), keep_last=2)
    save(store, 200)
    save(store, 400)
    save(store, 250)
    save(store, 300)
    assert [i.step for i in store.list()] == [250, 300]
    assert store.load_latest_good()[0]["step"] == 300
