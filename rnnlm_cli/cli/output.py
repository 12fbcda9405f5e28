"""Where the CLI writes: data to stdout, everything else (logs, tables for people, errors) to stderr."""

from __future__ import annotations

import json
import logging
import math
import sys
from typing import Any

from rich.console import Console
from tqdm import tqdm


def _console(stream) -> Console:
    # a terminal gets its own width; a file or pipe gets whole rows instead of rich's 80 columns
    width = None if stream.isatty() else 10_000
    return Console(file=stream, width=width, highlight=False, soft_wrap=width is not None)


def stdout() -> Console:
    # looked up per call: test runners and pipes swap sys.stdout
    return _console(sys.stdout)


def stderr() -> Console:
    return _console(sys.stderr)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")


def print_json_line(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")


def print_error(message: str) -> None:
    sys.stderr.write(f"rnnlm: error: {message}\n")


def number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


class _StderrHandler(logging.Handler):
    """Log lines on stderr that do not break a running tqdm bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def setup_logging(quiet: bool) -> None:
    """The library logs through ``logging``; show its lines on stderr (warnings only with --quiet)."""
    logger = logging.getLogger("rnnlm_cli")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
