"""Live sessions: predict each closed candle, settle, paper-trade and train as the mode says.

    settings = SessionSettings.from_config(cfg)
    session = Session("binance:BTC/USDT@1h", "binance:BTC/USDT", "1h", "every_candle", settings)
    queue = TrainingQueue(cfg.live.queue_capacity, cfg.train.batch_size)
    journal = Journal(journal_path(cfg))
    preds = tick([(session, candle)], predictor, queue, journal)   # per closed candle
    batch = queue.take()   # -> ModelActor.train_batch(*batch.arrays()); queue.done(batch.id, answer)

Modules, one concept each: ``config`` (modes, settings), ``history`` (bounded candles, live
windows by the training code), ``paper`` (incremental simulator semantics), ``metrics``
(settlement, counters), ``session`` (the per-candle step), ``queue`` (bounded training
queue and its accounting), ``journal`` (SQLite: restart and chart), ``tick`` (a host's pass).
"""

from pipelines.live.config import MODES, SessionSettings, check_live_config, journal_path
from pipelines.live.history import Candle, CandleHistory, iter_candles
from pipelines.live.journal import Journal
from pipelines.live.paper import PaperBook, Trade
from pipelines.live.queue import Batch, Sample, TrainCounts, TrainingQueue
from pipelines.live.session import LivePrediction, LiveWindow, Session
from pipelines.live.tick import predict_windows, tick

__all__ = [
    "MODES",
    "Batch",
    "Candle",
    "CandleHistory",
    "Journal",
    "LivePrediction",
    "LiveWindow",
    "PaperBook",
    "Sample",
    "Session",
    "SessionSettings",
    "TrainCounts",
    "Trade",
    "TrainingQueue",
    "check_live_config",
    "iter_candles",
    "journal_path",
    "predict_windows",
    "tick",
]
