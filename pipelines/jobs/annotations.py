"""Training on annotations: every stored annotation → samples → epochs through the ModelActor.

``annotation_split`` builds a ``Split`` whose training set is the samples of every stored
annotation (``pipelines.data.annotations.to_samples``) and whose holdout is empty, so
``jobs.training.train_split`` runs it like batch training (pipelined calls, progress),
with ``kind="annotations"`` in every checkpoint it makes.

``tag_run`` marks the model's MLflow run with the kind of its latest training. The run is
the ModelActor's (one per model, across batch and annotation training); the tag is one
write after the actor has flushed its own, through the tracking package's choke point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from conf import Config
from pipelines.data.annotations import (
    AnnotationStore,
    CandleLoader,
    Samples,
    candle_loader,
    store_path,
    to_samples,
)
from pipelines.data.dataset import Split
from pipelines.errors import AnnotationError

TRAINING_KIND_TAG = "candleray.training_kind"


@dataclass
class AnnotationSet:
    split: Split  # train: every annotation sample; holdout: empty
    samples: Samples
    annotations: int


def annotation_split(cfg: Config, *, loader: CandleLoader | None = None) -> AnnotationSet:
    """Samples of every stored annotation; ``AnnotationError`` when there are none."""
    load = loader or candle_loader(cfg.data)
    path = store_path(cfg)
    items = AnnotationStore(path, loader=load, tolerance=cfg.annotations.price_tolerance).find()
    if not items:
        raise AnnotationError(
            # the API and the CLI both land here: name both ways to mark a trade
            f"no annotations in {path}; mark trades first (POST /annotations or the "
            "dashboard; on the command line `candleray annotate add` or `annotate import`)"
        )
    samples = to_samples(items, load, cfg)
    ds = samples.data
    ranges = {}
    for sid, key in enumerate(ds.symbols):
        t = ds.end_time[ds.symbol == sid]
        ranges[key] = {
            "train_start": pd.Timestamp(int(t.min()), tz="UTC").isoformat(),
            "train_end": pd.Timestamp(int(t.max()), tz="UTC").isoformat(),
            "holdout_start": "",
            "holdout_end": "",
        }
    split = Split(ds, ds.subset(np.arange(0)), ranges)
    return AnnotationSet(split, samples, len(items))


def tag_run(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Set tags on an MLflow run (``TrackingError`` when the store refuses)."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.store import call_mlflow

    client = MlflowClient(tracking_uri=uri)
    for key, value in tags.items():

        def set_tag(k: str = key, v: str = value) -> None:
            client.set_tag(run_id, k, v)

        call_mlflow(uri, f"set tag {key}", set_tag)
