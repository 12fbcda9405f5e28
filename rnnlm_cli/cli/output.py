"""Where the CLI writes: data to stdout, everything else (logs, tables for people, errors) to stderr."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

from rich.console import Console
from tqdm import tqdm


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit with 1; the command's error handling ends a closed pipe (`| head`) quietly with 0
        raise BrokenPipeError


def _console(stream) -> Console:
    # a terminal gets its own width; a file or pipe gets whole rows instead of rich's 80 columns
    width = None if stream.isatty() else 10_000
    return _Console(file=stream, width=width, highlight=False, soft_wrap=width is not None)


def stdout() -> Console:
    # looked up per call: test runners and pipes swap sys.stdout
    return _console(sys.stdout)


def stderr() -> Console:
    return _console(sys.stderr)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")


def print_json_line(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")


def write_tsv_row(row) -> None:
    sys.stdout.write("\t".join(_tsv_field(value) for value in row) + "\n")


def write_tsv(columns, rows) -> None:
    """A header, then one line per row; tabs, line breaks and backslashes in values are escaped."""
    sys.stdout.write("\t".join(columns) + "\n")
    for row in rows:
        write_tsv_row(row)


def _tsv_field(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    text = str(value)
    if any(c in text for c in "\t\n\r\\"):
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def shared_folder(paths: list[str]) -> tuple[str, list[str]]:
    """The folder that all ``paths`` are in, and each path relative to it: ("../data/ptb", ["valid.txt",
    "test.txt"]). ("", paths) when they share none, or one of them is stdin."""
    if any(path.startswith("<") for path in paths):
        return "", paths
    folders = [os.path.dirname(path) for path in paths]
    try:
        folder = os.path.commonpath(folders) if all(folders) else ""
    except ValueError:  # absolute and relative paths mixed
        folder = ""
    if not folder:
        return "", paths
    return folder, [os.path.relpath(path, folder) for path in paths]


def print_error(message: str, label: str = "error") -> None:
    sys.stderr.write(f"rnnlm: {label}: {message}\n")


def number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1e12:  # a diverged model's perplexity
        return f"{value:.3g}"
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


class OrderedText:
    """Writes growing texts to stdout in index order, one per line: the earliest unfinished text as it grows,
    later ones when their turn comes. ``separator`` goes between texts (a blank line for multi-line texts)."""

    def __init__(self, separator: str = "") -> None:
        self.separator = separator
        self.current = 0  # index of the text being written
        self.written = 0  # characters of it already on stdout
        self.started = False  # whether its separator is out
        self.texts: dict[int, str] = {}
        self.complete: set[int] = set()

    def update(self, index: int, text: str, complete: bool) -> None:
        """``text`` is the whole text of ``index`` so far; each update extends the one before."""
        self.texts[index] = text
        if complete:
            self.complete.add(index)
        while self.current in self.texts:
            text = self.texts[self.current]
            if not self.started:
                sys.stdout.write(self.separator if self.current > 0 else "")
                self.started = True
            sys.stdout.write(text[self.written:])
            self.written = max(self.written, len(text))
            if self.current not in self.complete:
                break
            sys.stdout.write("\n")
            del self.texts[self.current]
            self.current, self.written, self.started = self.current + 1, 0, False
        sys.stdout.flush()
