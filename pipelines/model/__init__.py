"""The model: the transformer network, its trainer (loss, per-sample weights, metrics) and
checkpoints (atomic, verified, pruned).

    from pipelines.model import CandleTransformer, ModelSpec, Trainer, CheckpointStore
"""

from pipelines.model.checkpoints import CheckpointInfo, CheckpointStore
from pipelines.model.network import CandleTransformer, ModelSpec, resolve_device
from pipelines.model.trainer import METRICS, Trainer

__all__ = [
    "METRICS",
    "CandleTransformer",
    "CheckpointInfo",
    "CheckpointStore",
    "ModelSpec",
    "Trainer",
    "resolve_device",
]
