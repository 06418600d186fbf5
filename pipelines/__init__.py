"""candleray's library, by concept: ``data``, ``model``, ``tracking``, ``backtest``, ``jobs``,
``cli``; cross-cutting ``errors``, ``retry``, ``cluster``, ``version`` and ``config`` at the top.

Imports run one way: ``conf`` and ``pipelines.data`` know nothing of actors, Serve or the CLI.
"""
