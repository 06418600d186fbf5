import json
import os
import time
from pathlib import Path

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
    stem = os.path.basename(info.path)[: -len(".pt")]
    assert sorted(os.listdir(tmp_path)) == [f"{stem}.json", f"{stem}.pt"]
    assert stem.startswith("ckpt-00000001-step000000010-")
    meta = json.loads((tmp_path / f"{stem}.json").read_text())
    assert meta["kind"] == "batch" and meta["config"] == {"a": 1} and len(meta["sha256"]) == 64
    assert meta["file"] == f"{stem}.pt" and meta["seq"] == 1
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


class Killed(BaseException):
    """A kill -9 stand-in: not an Exception, so no handler in the store cleans up after it."""


def crash_before_sidecar(store, monkeypatch):
    """Make the next save die after its weights are renamed into place, before its sidecar is."""
    real_mv = store.fs.mv

    def mv(src, dst, *a, **k):
        if dst.endswith(".json"):
            raise Killed(dst)
        return real_mv(src, dst, *a, **k)

    monkeypatch.setattr(store.fs, "mv", mv)


def test_a_crash_between_weights_and_sidecar_never_mislabels_weights(tmp_path, monkeypatch):
    """A save of a step that already has a checkpoint (after a rewind or a restart) dies
    between its weights and its sidecar: every listed checkpoint still loads the weights its
    sidecar describes, the half-written save is not listed, and the next save cleans it up."""
    store = CheckpointStore(str(tmp_path), keep_last=5)
    save(store, 4, best=True)
    crash_before_sidecar(store, monkeypatch)
    with pytest.raises(Killed):
        store.save({**state(4), "model": {"w": torch.full((3,), 44.0)}}, {"step": 4})
    monkeypatch.undo()
    assert [(i.step, i.is_best) for i in store.list()] == [(4, True)]
    st, meta = store.load(store.best().path)
    assert torch.equal(st["model"]["w"], torch.full((3,), 4.0)) and meta["step"] == 4
    assert store.load_latest_good()[0]["step"] == 4
    save(store, 5)
    on_disk = sorted(p for p in os.listdir(tmp_path) if p.endswith(".pt"))
    assert on_disk == sorted(os.path.basename(i.path) for i in store.list())


def test_every_save_writes_its_own_files(tmp_path):
    """Saving a step again never rewrites an earlier checkpoint's weights or metadata."""
    store = CheckpointStore(str(tmp_path), keep_last=5)
    first = save(store, 10, best=True)
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    again = store.save({**state(10), "model": {"w": torch.zeros(3)}}, {"step": 10})
    assert again.path != first.path
    assert all((tmp_path / p).read_bytes() == b for p, b in before.items())
    assert [(i.step, i.is_best) for i in store.list()] == [(10, True), (10, False)]
    sidecar = json.loads(Path(again.path[: -len(".pt")] + ".json").read_text())
    assert sidecar["file"] == os.path.basename(again.path)


def test_resaving_the_best_weights_keeps_the_best_flag(tmp_path):
    store = CheckpointStore(str(tmp_path), keep_last=1)
    save(store, 10, best=True)
    again = save(store, 10)  # the same bytes, saved without the flag (e.g. after a restart)
    assert again.is_best and store.best().path == again.path
    assert [i.step for i in store.list()] == [10]


def test_a_clock_behind_does_not_prune_the_new_checkpoint(tmp_path, monkeypatch):
    """Checkpoints are ordered by a sequence number, not by the writer's wall clock."""
    store = CheckpointStore(str(tmp_path), keep_last=2)
    save(store, 100)
    save(store, 200)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 60)  # a restart on a node 60 s behind
    info = save(store, 300)
    monkeypatch.undo()
    assert [i.step for i in store.list()] == [200, 300]
    assert os.path.exists(info.path)
    assert store.load_latest_good()[0]["step"] == 300


@pytest.mark.parametrize("content", [b"{}", b"[]", b'{"step": null}', b'{"step": 2, "metrics": 1}'])
def test_a_sidecar_that_is_not_a_record_is_skipped(tmp_path, caplog, content):
    store = CheckpointStore(str(tmp_path), keep_last=3)
    save(store, 1)
    (tmp_path / "ckpt-000000002.json").write_bytes(content)  # parseable, but not a sidecar
    assert store.load_latest_good()[0]["step"] == 1
    assert [i.step for i in store.list()] == [1]
    save(store, 3)  # a save (and its prune) goes on
    assert [i.step for i in store.list()] == [1, 3]
    assert "ignoring unreadable checkpoint metadata" in caplog.text
    with pytest.raises(CheckpointError, match="metadata"):
        store.load(str(tmp_path / "ckpt-000000002.pt"))


def test_a_new_best_is_the_only_one_listed_best(tmp_path):
    """Each on-best save makes the earlier best an ordinary checkpoint: the listing has one
    is_best, the newest best, as docs/API.md says (and as mark_best leaves it)."""
    store = CheckpointStore(str(tmp_path), keep_last=10)
    save(store, 10, best=True)
    save(store, 20)
    save(store, 30, best=True)
    save(store, 40, best=True)
    save(store, 50)
    assert [(i.step, i.is_best) for i in store.list()] == [
        (10, False),
        (20, False),
        (30, False),
        (40, True),
        (50, False),
    ]
    assert store.best().step == 40
    store.mark_best(store.list()[0].path)
    assert [i.step for i in store.list() if i.is_best] == [10]
    save(store, 60, best=True)
    assert [i.step for i in store.list() if i.is_best] == [60]
