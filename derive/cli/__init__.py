"""Stage 9 — the command line: `derive …` subcommands, thin over the stages."""

from derive.cli.main import main

__all__ = ["main"]
