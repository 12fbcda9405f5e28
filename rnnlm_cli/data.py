"""Dataset directories and batching for truncated back-propagation through time.

A dataset directory holds:

- ``tokenizer.json`` — the tokenizer as plain data (a sentencepiece model as base64);
- ``train.ids``, ``valid.ids``, ``test.ids`` — each split as one flat little-endian array of token
  ids (``uint16`` when the vocabulary fits, else ``uint32``), with the end-of-sentence id after
  every line; training reads them by memory map;
- ``meta.json`` — written last: sources (name, sha256), lines, tokens and OOV counts per split.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rnnlm_cli.errors import ConfigError, DatasetError, TokenizerError
from rnnlm_cli.tokenizers import Tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)

DATASET_FORMAT = "rnnlm-dataset"
DATASET_VERSION = 1
SPLITS = ("train", "valid", "test")
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")

def tokenizer_to_json(tokenizer: Tokenizer) -> dict[str, Any]:
    data = tokenizer.to_dict()
    if isinstance(data.get("model"), bytes):
        data["model_base64"] = base64.b64encode(data.pop("model")).decode("ascii")
    return data


def tokenizer_from_json(data: dict[str, Any]) -> Tokenizer:
    data = dict(data)
    if "model_base64" in data:
        data["model"] = base64.b64decode(data.pop("model_base64"))
    return tokenizer_from_dict(data)


class Dataset:
    """A dataset directory opened for reading; splits come back as memory-mapped id arrays."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        if not self.directory.is_dir():
            raise DatasetError(f"{directory}: no such dataset directory (create one with `rnnlm tokenize`)")
        if not meta_path.exists():
            raise DatasetError(f"{directory}: no {META_FILE}; not a finished dataset (run `rnnlm tokenize` again)")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if self.meta.get("format") != DATASET_FORMAT:
                raise ValueError("not an rnnlm dataset")
            if self.meta.get("format_version", 0) > DATASET_VERSION:
                raise ValueError("made by a newer rnnlm; upgrade rnnlm to read it")
            self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
            self.tokenizer = tokenizer_from_json(
                json.loads((self.directory / TOKENIZER_FILE).read_text(encoding="utf-8"))
            )
        except (OSError, ValueError, KeyError, TypeError, TokenizerError) as error:
            raise DatasetError(f"{directory}: unreadable dataset ({error})") from None

    @property
    def splits(self) -> list[str]:
        return [split for split in SPLITS if split in self.meta["splits"]]

    def split_info(self, split: str) -> dict[str, Any]:
        return self.meta["splits"][split]

    def ids(self, split: str) -> np.ndarray:
        """The token ids of ``split``, memory-mapped (read-only)."""
        if split not in self.meta["splits"]:
            raise DatasetError(f"{self.directory}: has no {split} split")
        info = self.meta["splits"][split]
        path = self.directory / info["file"]
        expected = info["tokens"] * self.dtype.itemsize
        if not path.exists() or path.stat().st_size != expected:
            raise DatasetError(f"{path}: missing or not {expected} bytes long; run `rnnlm tokenize` again")
        if info["tokens"] == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r")

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        """What a checkpoint records about the text it was trained on."""
        return {
            split: {key: self.meta["splits"][split][key] for key in ("source", "sha256", "lines", "tokens")}
            for split in self.splits
        }


class BPTTBatches:
    """One token stream cut into ``batch_size`` parallel columns and windows of ``bptt`` steps.

    Column ``j`` is a contiguous slice of the stream; the hidden state carries from one window to
    the next within a column. Each target's input is the token before it, and the very first token
    is predicted after ``<eos>``, so training sees the same context convention as evaluation. The
    last ``len(ids) % batch_size`` tokens are left out, as in every BPTT trainer. In data-parallel
    training each process takes ``shard``: its rank's equal block of the columns.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, bptt: int, eos_id: int,
                 shard: tuple[int, int] = (0, 1)) -> None:
        rank, processes = shard
        if batch_size % processes:
            raise ConfigError(f"--batch-size {batch_size} does not divide among {processes} processes; each "
                              f"trains an equal share of the streams, so give a multiple of {processes}")
        self.bptt = bptt
        self.column_length = len(ids) // batch_size
        if self.column_length < 1:
            raise DatasetError(f"{len(ids)} training tokens are too few for a batch size of {batch_size}")
        usable = self.column_length * batch_size
        # the token before each column's first target: <eos> for the stream's start
        starts = np.arange(batch_size) * self.column_length
        first_inputs = np.where(starts > 0, ids[np.maximum(starts - 1, 0)], eos_id).astype(np.int64)
        # with several processes (shard = (rank, processes)) this one keeps its own block of columns
        self.batch_size = batch_size // processes  # the rows of each batch this process trains on
        rows = slice(rank * self.batch_size, (rank + 1) * self.batch_size)
        self.targets = ids[:usable].reshape(batch_size, self.column_length)[rows]
        self.first_inputs = first_inputs[rows]

    def __len__(self) -> int:
        return math.ceil(self.column_length / self.bptt)

    @property
    def tokens(self) -> int:
        return self.column_length * self.batch_size

    def __getitem__(self, index: int):
        """``(inputs, targets)``, two int64 tensors of shape (batch_size, window)."""
        import torch

        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.bptt
        stop = min(start + self.bptt, self.column_length)
        targets = np.asarray(self.targets[:, start:stop], dtype=np.int64)
        if start == 0:
            inputs = np.concatenate([self.first_inputs[:, None], targets[:, :-1]], axis=1)
        else:
            inputs = np.asarray(self.targets[:, start - 1 : stop - 1], dtype=np.int64)
        return torch.from_numpy(inputs), torch.from_numpy(targets)


def line_ends(ids: np.ndarray, eos_id: int) -> np.ndarray:
    """Positions just after each end-of-sentence id: where each line of the stream ends."""
    return np.flatnonzero(np.asarray(ids) == eos_id) + 1


def stream_share(ids: np.ndarray, eos_id: int, shard: tuple[int, int]) -> np.ndarray:
    """Process ``rank``'s contiguous share of a token stream, for ``shard = (rank, processes)``: about
    ``len(ids) / processes`` tokens, cut at line ends so that every share starts a line."""
    rank, processes = shard
    ends = line_ends(ids, eos_id)
    cuts = [0]
    for aim in np.linspace(0, len(ids), processes + 1)[1:-1]:
        at = np.searchsorted(ends, aim)
        cuts.append(max(cuts[-1], int(ends[at]) if at < len(ends) else len(ids)))
    cuts.append(len(ids))
    return ids[cuts[rank] : cuts[rank + 1]]
