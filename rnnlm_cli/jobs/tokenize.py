"""The tokenize job: build a tokenizer from the training text and write a dataset directory.

The vocabulary (or sentencepiece model) comes from the training text only; every split is then encoded by a pool
of worker processes into the directory's id arrays (``rnnlm_cli.data`` describes the layout and reads it back).
The directory is built beside its final place and renamed into it once complete, so an interrupted run leaves
nothing half-written behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from rnnlm_cli import __version__
from rnnlm_cli.config import TokenizeConfig
from rnnlm_cli.data import (
    DATASET_FORMAT,
    DATASET_VERSION,
    META_FILE,
    SPLITS,
    TOKENIZER_FILE,
    id_dtype,
    tokenizer_to_json,
)
from rnnlm_cli.errors import DatasetError, signal_exit_code
from rnnlm_cli.textio import STDIN, ByteTally, check_readable, display_name, iter_lines
from rnnlm_cli.tokenizers import Tokenizer, tokenizer_from_dict, train_tokenizer

log = logging.getLogger(__name__)

_ENCODE_CHUNK_LINES = 10_000
MAX_DEFAULT_JOBS = 8


@dataclass
class SplitSummary:
    split: str  # train | valid | test
    source: str  # the text file it was encoded from, as given
    sha256: str  # of the source file's bytes
    lines: int
    tokens: int  # token ids written, one end-of-sentence id per line included
    oov: int  # words (or characters) outside the vocabulary, written as <unk>

    @property
    def oov_rate(self) -> float:
        """OOV units over the tokens that are not end-of-sentence."""
        return self.oov / max(self.tokens - self.lines, 1)


@dataclass
class DatasetSummary:
    directory: str
    kind: str
    vocab_size: int
    dtype: str
    splits: list[SplitSummary] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype,
            "splits": [{**asdict(split), "oov_rate": split.oov_rate} for split in self.splits],
        }



def tokenize_corpus(config: TokenizeConfig) -> DatasetSummary:
    """Build the tokenizer from ``config.train`` only and write every split into ``config.out``.

    Text is streamed: the training file is read twice (once to build the tokenizer, once to encode
    it; standard input is first copied to a file in the build directory), the other splits once, and
    at most ``_ENCODE_CHUNK_LINES`` lines are held at a time, so memory does not grow with the corpus.
    The dataset is built in a temporary directory beside ``out`` and moved into place once complete,
    so a failure leaves nothing behind and an existing dataset (replaced only with ``force``) intact.
    """
    out = Path(config.out)
    _check_output_dir(out, config.force)
    sources = {split: path for split, path in zip(SPLITS, (config.train, config.valid, config.test))
               if path is not None}
    _check_sources(sources)
    _remove_dead_builders(out)
    building = out.with_name(f".{out.name}.building-{os.getpid()}")
    with _terminated_as_exit():  # from before the folder exists: a SIGTERM at any point leaves none behind
        try:
            building.mkdir(parents=True)
        except OSError as error:
            raise DatasetError(f"{out}: cannot write the dataset there ({error.strerror or error})") from None
        try:
            train = _TrainingText(config.train, building, config.encoding_errors)
            tokenizer = train_tokenizer(
                config.kind, train.lines(), config.vocab_size, config.min_freq, config.lowercase,
                config.character_coverage, reread=lambda: train.reread(ByteTally()),
            )
            jobs = config.jobs or min(os.cpu_count() or 1, MAX_DEFAULT_JOBS)
            summary = _write_dataset(building, tokenizer, id_dtype(tokenizer.vocab_size), sources, train,
                                     config.encoding_errors, jobs)
            summary.directory = str(out)
            _move_into_place(building, out)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return summary


@contextlib.contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM (``timeout``, a job manager) ends the process with 143 through Python's exit, so that the half-built
    dataset is removed and the workers are shut down on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        raise SystemExit(signal_exit_code(signal.SIGTERM))

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_dead_builders(out: Path) -> None:
    """Remove what a killed tokenize left beside ``out``: its building (or replaced) folders, named after the
    process that made them, when that process is gone."""
    if not out.parent.is_dir():
        return
    for leftover in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if not kind.endswith((".building", ".replaced")) or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        log.info("removed %s, left by a tokenize that did not finish", leftover)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _check_sources(sources: dict[str, str]) -> None:
    """Every input file can be opened, before any work starts (TokenizeConfig allows stdin for one split)."""
    for path in sources.values():
        if path != STDIN:
            check_readable(path)


class _TrainingText:
    """The training text, read once to build the tokenizer and once more to encode it.

    Standard input is copied to a file in the build directory first. The second reading must see
    the same bytes as the first (a file that changes in between is an error, not a mixed dataset).
    """

    def __init__(self, path: str, building: Path, errors: str) -> None:
        self.path, self.name, self.errors = path, display_name(path), errors
        self.copied = path == STDIN
        if self.copied:
            self.path = str(building / ".train-from-stdin")
            with open(self.path, "wb") as copy:
                shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
        self.first = ByteTally()
        if not any(line.strip() for line in iter_lines(self.path, errors=errors, name=self.name)):
            raise DatasetError(f"{self.name}: the training text is empty")

    def lines(self) -> Iterator[str]:
        """The first reading, for building the tokenizer."""
        return iter_lines(self.path, self.first, self.errors, self.name)

    def reread(self, tally: ByteTally) -> Iterator[str]:
        return iter_lines(self.path, tally, self.errors, self.name)

    def check_unchanged(self, tally: ByteTally) -> None:
        if (tally.size, tally.sha256) != (self.first.size, self.first.sha256):
            raise DatasetError(f"{self.name}: the file changed while it was being tokenized; run tokenize again")

    def remove_copy(self) -> None:
        if self.copied:
            os.unlink(self.path)


def _write_dataset(directory: Path, tokenizer: Tokenizer, dtype: np.dtype, sources: dict[str, str],
                   train: _TrainingText, errors: str, jobs: int) -> DatasetSummary:
    _write_synced(directory / TOKENIZER_FILE,
                  json.dumps(tokenizer_to_json(tokenizer), ensure_ascii=False).encode())
    summary = DatasetSummary(str(directory), tokenizer.kind, tokenizer.vocab_size, dtype.name)
    for split, source in sources.items():
        tally = ByteTally()
        lines = train.reread(tally) if split == "train" else iter_lines(source, tally, errors)
        line_count, tokens, oov = _encode_lines(lines, tokenizer, dtype, directory / f"{split}.ids", jobs)
        if split == "train":
            train.check_unchanged(tally)
            train.remove_copy()
        summary.splits.append(SplitSummary(split, source, tally.sha256, line_count, tokens, oov))
    meta = {
        "format": DATASET_FORMAT,
        "format_version": DATASET_VERSION,
        "created_by": f"rnnlm {__version__}",
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "lowercase": tokenizer.lowercase},
        "dtype": dtype.name,
        "splits": {s.split: {**asdict(s), "oov_rate": s.oov_rate, "file": f"{s.split}.ids"} for s in summary.splits},
    }
    _write_synced(directory / META_FILE, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode())
    return summary


def _move_into_place(building: Path, out: Path) -> None:
    """Rename the finished dataset to ``out``; an old dataset there is set aside first and removed after."""
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(building, out)
    shutil.rmtree(old, ignore_errors=True)


def _check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / META_FILE).exists() and not (out / TOKENIZER_FILE).exists():
        raise DatasetError(f"{out}: directory is not empty and holds no rnnlm dataset; choose another --out")
    if not force:
        raise DatasetError(f"{out}: already holds a dataset; add --force to replace it")


def _encode_lines(lines: Iterator[str], tokenizer: Tokenizer, dtype: np.dtype, path: Path,
                  jobs: int = 1) -> tuple[int, int, int]:
    """Encode ``lines`` into ``path``, a chunk of lines at a time; (lines, tokens, oov) written."""
    line_count = tokens = oov = 0
    with open(path, "wb") as file:
        for chunk_lines, ids, chunk_oov in _encoded_chunks(lines, tokenizer, dtype, jobs):
            ids.tofile(file)
            line_count += chunk_lines
            tokens += len(ids)
            oov += chunk_oov
        file.flush()
        os.fsync(file.fileno())
    return line_count, tokens, oov


def _encoded_chunks(lines: Iterator[str], tokenizer: Tokenizer, dtype: np.dtype,
                    jobs: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """(lines, ids with an end-of-sentence id after each line, OOV count) of each chunk of lines, in order.

    Text longer than one chunk is encoded by ``jobs`` worker processes. At most two chunks per worker
    are in flight, so memory stays bounded however fast the file is read.
    """
    chunks = iter(lambda: list(islice(lines, _ENCODE_CHUNK_LINES)), [])
    head = list(islice(chunks, 2))  # one chunk is encoded here; starting workers would cost more
    chunks = chain(head, chunks)
    if len(head) < 2 or jobs <= 1:
        for chunk in chunks:
            yield len(chunk), *_encode_chunk(tokenizer, chunk, dtype)
        return
    # fork on Linux, as PyTorch's DataLoader does: a spawned worker would re-run the caller's main script
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    pool = ProcessPoolExecutor(jobs, context, initializer=_start_worker, initargs=(tokenizer.to_dict(), os.getpid()))
    pending: deque[tuple[int, Future]] = deque()
    try:
        for chunk in chunks:
            pending.append((len(chunk), pool.submit(_encode_in_worker, chunk, dtype)))
            if len(pending) >= 2 * jobs:
                count, future = pending.popleft()
                yield count, *future.result()
        while pending:
            count, future = pending.popleft()
            yield count, *future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def _encode_chunk(tokenizer: Tokenizer, chunk: list[str], dtype: np.dtype) -> tuple[np.ndarray, int]:
    ids: list[int] = []
    oov = 0
    for encoded in tokenizer.encode_many(chunk):
        ids.extend(encoded.ids)
        ids.append(tokenizer.eos_id)
        oov += encoded.oov
    return np.asarray(ids, dtype=dtype), oov


_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer: dict[str, Any], parent: int) -> None:
    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    _die_with(parent)
    _worker_tokenizer = tokenizer_from_dict(tokenizer)


def _die_with(parent: int) -> None:
    """End this worker when ``parent`` ends, however it ends (kill -9 included): a worker left behind would hold
    the caller's output pipe open. Linux kills it at once (PR_SET_PDEATHSIG); elsewhere a thread checks the
    parent every second."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before the request took hold
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _encode_in_worker(chunk: list[str], dtype: np.dtype) -> tuple[np.ndarray, int]:
    assert _worker_tokenizer is not None
    return _encode_chunk(_worker_tokenizer, chunk, dtype)


def _write_synced(path: Path, data: bytes) -> None:
    """Write and fsync (the dataset directory as a whole is renamed into place once complete)."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


