"""Long jobs built from the library: batch training over history through the ModelActor
(``training``) and held-out evaluation against baselines (``evaluation``).

They sit above ``data``, ``model`` and ``tracking`` and below the CLI and Serve, which run
them; cross-cutting helpers (``errors``, ``retry``, ``cluster``, ``version``, ``config``)
stay at the top of ``pipelines`` because every subpackage uses them.
"""

from pipelines.jobs.evaluation import evaluate_split
from pipelines.jobs.training import EpochResult, load_all, prepare, train_split

__all__ = ["EpochResult", "evaluate_split", "load_all", "prepare", "train_split"]
