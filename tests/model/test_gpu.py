"""GPU smoke test: 100 steps on CUDA, checkpoint saved on GPU, loaded on CPU and back.

Skipped where no CUDA device exists; run it on a GPU machine with
``.venv/bin/pytest -q -s tests/test_gpu.py`` (it prints its timings).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from actors.model.core import ModelCore
from pipelines.model.checkpoints import CheckpointStore
from pipelines.model.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def test_100_steps_on_cuda_and_checkpoint_round_trip(make_cfg, tmp_path):
    cfg = make_cfg("model.device=auto", "checkpoint.every_steps=50", "model.dropout=0.0")
    core = ModelCore(cfg)
    assert core.device.type == "cuda"  # auto picks CUDA when present
    spec = core.spec
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, spec.window, spec.n_features)).astype(np.float32)
    yc, ya = rng.standard_normal((256, 5)).astype(np.float32), rng.integers(0, 3, 256)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(100):
        b = slice((i * 64) % 192, (i * 64) % 192 + 64)
        m = core.train_batch(x[b], yc[b], ya[b])
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(
        f"\n100 CUDA steps (batch 64) in {dt:.2f}s = {100 * 64 / dt:.0f} samples/s on {torch.cuda.get_device_name()}"
    )
    assert m["step"] == 100 and np.isfinite(m["total_loss"])
    info = core.save_checkpoint("gpu-smoke")

    # load on CPU: weights_only, map_location=cpu, same predictions
    state, _ = CheckpointStore(core.store.uri).load(info["path"])
    cpu = Trainer(spec, cfg.train, torch.device("cpu"))
    cpu.load_state(state)
    assert next(cpu.model.parameters()).device.type == "cpu"
    xb = torch.from_numpy(x[:32])
    core.trainer.model.eval()
    cpu.model.eval()
    with torch.no_grad():
        g_c, g_a = core.trainer.model(xb.cuda())
        c_c, c_a = cpu.model(xb)
    torch.testing.assert_close(g_c.cpu(), c_c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_a.cpu(), c_a, rtol=1e-4, atol=1e-4)

    # and back to the GPU: a restarted actor resumes on CUDA, optimizer state included
    again = ModelCore(cfg)
    assert again.trainer.step == 100 and again.device.type == "cuda"
    assert all(
        v.device.type == "cuda"
        for s in again.trainer.optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    )
    out = again.train_batch(x[:64], yc[:64], ya[:64])
    assert out["step"] == 101 and np.isfinite(out["total_loss"])
