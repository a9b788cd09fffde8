"""The `twinnode` command line: argument parsing and rendering only; `main` dispatches."""
from twinnode.cli.main import main

__all__ = ["main"]
