"""Reading UTF-8 text line by line from a file or from standard input (``-``)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rnnlm_cli.errors import InputError

STDIN = "-"
_BOM = "\ufeff"


def display_name(path: str) -> str:
    return "<stdin>" if path == STDIN else path


def _open_binary(path: str) -> BinaryIO:
    if path == STDIN:
        return sys.stdin.buffer
    file = Path(path)
    if file.is_dir():
        raise InputError(f"{path}: is a directory, expected a text file")
    try:
        return open(file, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None


def check_readable(path: str) -> None:
    """Raise the one-line InputError that reading ``path`` would raise, before any work starts."""
    _open_binary(path).close()


class ByteTally:
    """Counts and hashes the raw bytes that :func:`iter_lines` reads."""

    def __init__(self) -> None:
        self.size = 0
        self._digest = hashlib.sha256()

    def update(self, raw: bytes) -> None:
        self.size += len(raw)
        self._digest.update(raw)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def iter_lines(path: str, tally: ByteTally | None = None, errors: str = "strict",
               name: str | None = None) -> Iterator[str]:
    """Yield the lines of ``path`` (or stdin for ``-``) without terminators, decoding UTF-8.

    ``\\r\\n`` endings count as ``\\n``; a UTF-8 byte-order mark at the start is dropped. Invalid UTF-8
    is an error naming the line (``errors="strict"``) or becomes U+FFFD (``errors="replace"``). When
    ``tally`` is given it sees every raw byte read. Messages call the input ``name`` (default: the path).
    """
    stream = _open_binary(path)
    name = name or display_name(path)
    try:
        for number, raw in enumerate(stream, start=1):
            if tally is not None:
                tally.update(raw)
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as error:
                raise InputError(
                    f"{name}, line {number}: not valid UTF-8 "
                    f"(byte {error.start + 1} of the line: {error.reason}; tokenize and eval carry on with "
                    "--encoding-errors replace)"
                ) from None
            if number == 1 and line.startswith(_BOM):
                line = line[1:]
            if line.endswith("\n"):
                line = line[:-2] if line.endswith("\r\n") else line[:-1]
            yield line
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def read_path_list(path: str) -> list[str]:
    """Paths listed one per line in ``path`` (``-``: stdin); blank lines are skipped."""
    return [line.strip() for line in iter_lines(path) if line.strip()]
