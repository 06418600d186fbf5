"""The ``candleray`` command line: a parser, and one module per command."""

from pipelines.cli.parser import main

__all__ = ["main"]
