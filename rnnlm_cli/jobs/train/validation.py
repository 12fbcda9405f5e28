"""Validation during training, and what ``--log-gradients`` records: every step's gradient norm and a probe of
how the loss gradient reaches back through the hidden states."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from rnnlm_cli import distributed
from rnnlm_cli.data import Dataset, line_ends, stream_share
from rnnlm_cli.errors import DatasetError, TrainingError
from rnnlm_cli.model import RNNLanguageModel
from rnnlm_cli.runtime import autocast
from rnnlm_cli.scoring import score_lines_backward, score_stream

log = logging.getLogger(__name__)

# --log-gradients: the hidden-state probe reads this many steps (and rows) of the validation text
PROBE_STEPS = 64
PROBE_ROWS = 4


def training_and_validation(dataset: Dataset, valid_fraction: float) -> tuple[np.ndarray, np.ndarray, str]:
    """The training ids, the validation ids and where the latter came from: the valid split, or without one the
    last ``valid_fraction`` of the training lines."""
    train_ids = dataset.ids("train")
    if "valid" in dataset.splits and dataset.split_info("valid")["tokens"] > 0:
        return train_ids, dataset.ids("valid"), f"valid split ({dataset.split_info('valid')['source']})"
    ends = line_ends(train_ids, dataset.tokenizer.eos_id)
    if len(ends) < 2:
        raise DatasetError(f"{dataset.directory}: no valid split, and too little training text to hold some out")
    held_lines = max(1, round(len(ends) * valid_fraction))
    cut = int(ends[len(ends) - held_lines - 1])
    source = f"held out: the last {held_lines} lines ({len(train_ids) - cut} tokens) of train"
    log.info("no valid split in %s: holding out %s for validation", dataset.directory,
             source.removeprefix("held out: "))
    return train_ids[:cut], train_ids[cut:], source


class Validator:
    """Scores the validation text in each direction trained, exactly as `rnnlm eval --context stream` does with
    ``--precision`` set to the training precision (bf16 scoring is about 1.6x faster on the presets).

    With several processes each scores its own share of the lines (from a fresh state) and the sums are pooled.
    """

    def __init__(self, model: RNNLanguageModel, valid_ids: np.ndarray, eos_id: int, device: torch.device,
                 precision: str, world: distributed.World) -> None:
        self.model, self.valid_ids, self.eos_id = model, valid_ids, eos_id
        self.device, self.precision, self.world = device, precision, world
        self.reversed = model.config.readings()
        self.losses: list[float] = []  # of each direction, at the last validation

    def loss(self) -> float:
        """Mean nll per token over the whole validation text, averaged over the directions."""
        self.losses = [self._direction_loss(backward) for backward in self.reversed]
        loss = sum(self.losses) / len(self.losses)
        if not math.isfinite(loss):
            raise TrainingError("the validation loss is not finite; the model diverged (try a lower --lr)")
        return loss

    def _direction_loss(self, backward: bool) -> float:
        """One direction's mean validation nll per token. The backward one reads each line right to left from a
        fresh state, as `rnnlm eval` scores that direction (batched by lines, so it is also the faster one)."""
        ids, eos = self.valid_ids, self.eos_id
        if self.world.active:
            ids = stream_share(ids, eos, (self.world.rank, self.world.size))
        total, count = 0.0, len(ids)
        if count:
            with autocast(self.device, self.precision):
                if backward:
                    lines = [line.tolist() for line in np.split(np.asarray(ids), line_ends(ids, eos)[:-1])]
                    nll = torch.cat(score_lines_backward(self.model, lines, eos))
                else:
                    nll, _ = score_stream(self.model, torch.from_numpy(np.asarray(ids, dtype=np.int64)), eos)
            total = float(nll.sum(dtype=torch.float64))
        if self.world.active:
            total, count = distributed.all_reduce([total, count], "sum", self.device)
        return total / max(count, 1)

    def probe(self) -> list[float] | None:
        """How the loss gradient reaches back through the hidden states of a window of the validation text."""
        window = probe_window(self.valid_ids[::-1] if self.reversed == [True] else self.valid_ids)
        if window is None:
            return None
        ids, targets = (torch.from_numpy(t).to(self.device) for t in window)
        return self.model.hidden_gradient_norms(ids, targets).tolist()


def probe_window(valid_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The hidden-state probe's input rows (B, T) and the token after each, from the start of the validation text:
    PROBE_ROWS rows of PROBE_STEPS tokens, fewer and shorter when the text is short (None under 3 tokens)."""
    steps = min(PROBE_STEPS, len(valid_ids) - 1)
    if steps < 2:
        return None
    rows = max(1, min(PROBE_ROWS, len(valid_ids) // (steps + 1)))
    window = np.asarray(valid_ids[: rows * (steps + 1)], dtype=np.int64).reshape(rows, steps + 1)
    return window[:, :-1], window[:, -1]


class GradientLog:
    """--log-gradients: every optimizer step's number and global gradient norm, kept in the checkpoint."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.norms: list[float] = []

    def record(self, step: int, norm: float) -> None:
        self.steps.append(step)
        self.norms.append(norm)

    def summary(self, after_step: int) -> dict[str, Any]:
        """The mean and largest norm of the steps after ``after_step`` (those of the current epoch)."""
        norms = [norm for step, norm in zip(self.steps, self.norms) if step > after_step]
        return {"gradient_norm_mean": sum(norms) / len(norms) if norms else None,
                "gradient_norm_max": max(norms, default=None)}

    def to_checkpoint(self) -> dict[str, torch.Tensor] | None:
        if not self.steps:
            return None
        return {"step": torch.tensor(self.steps, dtype=torch.int64),
                "norm": torch.tensor(self.norms, dtype=torch.float32)}

    def restore(self, saved: dict[str, torch.Tensor] | None) -> None:
        if saved is not None:
            self.steps, self.norms = saved["step"].tolist(), saved["norm"].tolist()
