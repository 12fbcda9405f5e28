"""Training with truncated back-propagation through time, validation, schedules, early stopping and resume.

``train(config)`` writes two checkpoints: ``config.out`` always holds the model with the best
validation loss so far, and its companion ``<stem>.last<suffix>`` holds the latest state with
everything needed to continue (optimizer, random generators, position in the epoch). Validation
runs at the end of every epoch and, with ``valid_every`` N, after steps N, 2N, ... of each epoch; any
validation can give the best model. Every validation is also appended as one JSON line to
``<stem>.metrics.jsonl``.

Learning-rate schedules:

- ``plateau``: divide the rate by ``lr_decay`` after an epoch that did not improve validation;
- ``epoch`` (Zaremba et al.): full rate for ``decay_start`` epochs, then divided by ``lr_decay`` every epoch;
- ``cosine``: linear warm-up over ``warmup_steps``, then a cosine from the full rate down to 0 at the
  last step (the usual choice with Adam).

Started by ``torchrun`` with several processes, training is data-parallel (DistributedDataParallel,
gloo on CPUs, NCCL on GPUs): ``batch_size`` is the global batch and each process trains on its own
block of ``batch_size / processes`` streams; gradients are averaged, so the updates are those of one
process with the whole batch. Each process validates on its own line-aligned share of the validation
text (starting from a fresh state there) and the sums are reduced. Decisions to save or stop are taken
by all processes together after every step; rank 0 alone writes checkpoints, metrics and progress.

Directions: a ``backward`` model trains on the token stream reversed (it predicts each token from the
ones after it). A ``both`` model (biLM) trains its forward stack on the stream and its backward stack on
the reversed stream in the same step, the loss being the mean of the two. Validation scores each
direction as `rnnlm eval` does (the backward one line by line, each line reversed from a fresh state)
and the schedule follows their mean.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rnnlm_cli import distributed
from rnnlm_cli.checkpoint import Checkpoint, current_versions, epoch_label, load_checkpoint, save_checkpoint
from rnnlm_cli.config import TrainConfig, save_interval
from rnnlm_cli.data import BPTTBatches, Dataset, line_ends, stream_share
from rnnlm_cli.errors import CheckpointError, ConfigError, DatasetError, TrainingError, TrainingInterrupted
from rnnlm_cli.scoring import score_lines_backward, score_stream
from rnnlm_cli.model import Hidden, ModelConfig, RNNLanguageModel, detach_hidden
from rnnlm_cli.runtime import (autocast, configure_threads, keep_freed_memory, poll_threads, resolve_device,
                               resolve_precision, seed_everything)
from rnnlm_cli.sgd import PlainSGD

log = logging.getLogger(__name__)

# --log-gradients: the hidden-state probe reads this many steps (and rows) of the validation text
PROBE_STEPS = 64
PROBE_ROWS = 4

# settings that shape the weights and the optimizer state; a resumed run cannot change them
FIXED_ON_RESUME = ("cell", "emb_size", "hidden_size", "layers", "tie_weights", "init_range", "init_recurrent",
                   "forget_bias", "softmax", "cutoffs", "direction", "optimizer")
# settings of one invocation, not of the run: a resumed run starts from their defaults
PER_INVOCATION = ("max_time", "device", "force", "threads")


@dataclass
class TrainResult:
    checkpoint: str
    last_checkpoint: str
    metrics: str  # the JSON Lines file with one record per validation
    epochs: int  # epochs completed
    steps: int
    best_valid_ppl: float
    best_epoch: int
    stop_reason: str  # completed | early_stop | max_time
    elapsed_seconds: float  # the run's wall-clock time, over every process that trained it (resumed ones too)
    process_seconds: float  # this process's wall-clock time
    precision: str  # fp32 or bf16, as resolved from the config
    history: list[dict[str, Any]] = field(default_factory=list)
    validation: str = ""  # where the validation text came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def last_state_path(checkpoint: str | Path) -> Path:
    """Where the latest resumable state of the run whose best checkpoint is ``checkpoint`` lives."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.last{path.suffix}")


def metrics_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.metrics.jsonl")


def best_checkpoint_path(checkpoint: str | Path) -> Path:
    """The best-model checkpoint of a run, given either it or its ``.last`` companion."""
    path = Path(checkpoint)
    if path.stem.endswith(".last"):
        return path.with_name(path.stem.removesuffix(".last") + path.suffix)
    return path


def resume_path(checkpoint: str | Path) -> Path:
    """The file to resume from: ``checkpoint`` itself if it holds a resume state, else its companion."""
    path = Path(checkpoint)
    companion = last_state_path(path)
    if companion.exists():
        return companion
    if path.exists() and load_checkpoint(path).resumable:
        return path
    raise CheckpointError(f"{checkpoint}: nothing to resume from (no {companion.name} beside it)")


def config_for_resume(checkpoint: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The stored training config of a run, with ``overrides`` (explicit options) applied."""
    stored = load_checkpoint(resume_path(checkpoint)).train.get("config")
    if not stored:
        raise CheckpointError(f"{checkpoint}: holds no training config to resume")
    known = {f.name for f in fields(TrainConfig)}
    merged = {key: value for key, value in stored.items() if key in known and key not in PER_INVOCATION}
    for key, value in overrides.items():
        if key in FIXED_ON_RESUME and value != merged.get(key):
            raise ConfigError(f"cannot change --{key.replace('_', '-')} when resuming ({merged.get(key)} in the run)")
        if key not in ("dataset", "out") and merged.get(key) != value:
            log.info("resuming with %s = %s (was %s)", key, value, merged.get(key))
        merged[key] = value
    return TrainConfig(**merged)


@dataclass
class _Progress:
    """Where a run is; saved in the last-state checkpoint and restored on resume."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # next batch within the current epoch
    step: int = 0  # optimizer steps taken
    lr: float = 0.0
    best_valid_loss: float = math.inf  # over every validation, also those inside an epoch (--valid-every, a stop)
    best_epoch: int = 0
    best_complete_loss: float = math.inf  # over complete epochs only: what the schedule decides on
    bad_epochs: int = 0  # complete epochs in a row without a better validation loss
    epoch_loss_sum: float = 0.0  # training nll summed over the current epoch so far
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    epoch_steps: int = 0
    epoch_clipped_steps: int = 0  # steps of this epoch whose gradient norm was clipped
    # wall-clock seconds of the processes before this one (up to each one's last save), and how many there were:
    # records and results count time over the whole run, however often it was resumed
    earlier_seconds: float = 0.0
    earlier_processes: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def train(config: TrainConfig, resume: str | Path | None = None, progress: bool = True,
          started: float | None = None) -> TrainResult:
    """Train (or continue training) a model on ``config.dataset``; see the module docstring.

    ``started`` is the ``time.monotonic()`` reading that the ``max_time`` budget and this process's seconds count
    from: by default this call; the CLI passes its command's start, so that the budget covers importing torch too.
    """
    with _output_lock(Path(config.out), distributed.world_from_env().is_main):
        try:
            return _Trainer(config, resume, progress, started).run()
        finally:
            distributed.stop()


@contextlib.contextmanager
def _output_lock(out: Path, take: bool) -> Iterator[None]:
    """Hold an advisory lock on ``out`` (the file ``.NAME.lock`` beside it) while a run writes it, so that a second
    run on the same output is refused instead of both reporting success with one model lost. The lock goes with the
    process however it ends; the file is removed at the end of the run (or left by a killed one, to be reused)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    if not take or not out.parent.is_dir():  # the output checks report a folder that cannot be made
        yield
        return
    lock_path = out.with_name(f".{out.name}.lock")
    try:
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    except OSError:
        yield  # an output that cannot be written is reported by the output checks
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise TrainingError(f"{out}: another rnnlm train is writing it ({owner}); wait for it to end, or give "
                                f"another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock_path.unlink()  # still held: a run that opens the old file now finds it locked


class _Trainer:
    def __init__(self, config: TrainConfig, resume: str | Path | None, progress: bool,
                 started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.config = config
        if resume is None:
            _check_new_output(Path(config.out), config.force)
        self.world = distributed.world_from_env()
        self.progress = progress and self.world.is_main
        self.device = _training_device(config.device, self.world)
        self.precision = resolve_precision(config.precision, self.device)
        keep_freed_memory()
        seed_everything(config.seed)
        self.dataset = Dataset(config.dataset)
        self.tokenizer = self.dataset.tokenizer
        train_ids, self.valid_ids, self.validation_source = _training_and_validation(
            self.dataset, config.valid_fraction)
        self.model = RNNLanguageModel(ModelConfig(self.tokenizer.vocab_size, **config.architecture())).to(self.device)
        threads = configure_threads(config.threads, self.model.multiply_adds_per_token())
        # one entry per direction trained: reversed (right to left) or not; reversal is a view, never a copy
        self.reversed = self.model.config.readings()
        self.streams = [BPTTBatches(train_ids[::-1] if backward else train_ids, config.batch_size, config.bptt,
                                    self.tokenizer.eos_id, shard=(self.world.rank, self.world.size))
                        for backward in self.reversed]
        self.batches = self.streams[0]
        if self.world.rank:
            torch.manual_seed(config.seed + self.world.rank)  # its own dropout masks; the weights come from rank 0
        self.optimizer = _make_optimizer(config, self.model)
        self.model.sparse_embedding_gradient = _sparse_embedding_gradient(config, self.model, self.world, self.device)
        self.state = _Progress(lr=config.lr)
        self.hiddens: list[Hidden | None] = [None] * len(self.streams)  # the state carried in each direction
        self.valid_losses: list[float] = []  # of each direction, at the last validation
        self.stopping = 0  # why the last epoch stopped early: 1 for --max-time, else the signal's number
        self.finish_seconds: float | None = None  # how long this process's last validation and saves took
        self.kept_for_finish = 0.0  # of the --max-time budget, when it was last checked
        self.epoch_started, self.epoch_tokens_at_start = time.monotonic(), 0  # where _train_epoch last began
        self.gradient_steps: list[int] = []  # with --log-gradients: each step's number and global gradient norm
        self.gradient_norms: list[float] = []
        self.out = Path(config.out)
        self.metrics = metrics_path(self.out)
        self.save_steps, self.save_seconds = save_interval(config.save_every) if config.save_every else (None, None)
        self.last_saved = time.monotonic()
        self.stop = _StopSignals()  # replaced by the active one in run()
        if resume is not None:
            self._restore(resume_path(resume))
            log.info("resuming %s at epoch %d, step %d", resume, self.state.epoch + 1, self.state.step)
        elif self.world.is_main:
            self.metrics.unlink(missing_ok=True)
        self.step_module: nn.Module = _LossStep(self.model, self.reversed)
        if self.world.active:
            distributed.start(self.world, self.device.type)
            # one process's gradients, averaged over all of them during the backward pass
            # (a batch without targets in one of the adaptive softmax's clusters leaves that cluster unused)
            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.model.config.softmax == "adaptive")
        self.data_record = {"dataset": str(Path(config.dataset).resolve()), "splits": self.dataset.fingerprints(),
                            "validation": self.validation_source}
        log.info("training %s (%s)", _describe(self.model), f"preset {config.preset}" if config.preset else "no preset")
        log.info("on %s in %s%s; %s batches of %d x %d tokens per epoch%s", self.device, self.precision,
                 f", {threads} thread{'s' if threads > 1 else ''}" if self.device.type == "cpu" else "",
                 f"{len(self.batches):,}", config.batch_size, config.bptt,
                 f", on {self.world.size} processes with {self.batches.batch_size} streams each"
                 if self.world.active else "")

    def run(self) -> TrainResult:
        with _StopSignals() as self.stop:
            return self._run()

    def _run(self) -> TrainResult:
        config, state = self.config, self.state
        deadline = None if config.max_time is None else self.started + config.max_time
        stop_reason = "completed"
        if state.epoch >= config.epochs:
            log.info("the run has already trained %d epochs; raise --epochs to train more", state.epoch)
        else:
            log.info(EPOCH_HEADER)  # of the lines logged after each validation
        while state.epoch < config.epochs and stop_reason == "completed":
            finished = self._train_epoch(deadline)
            if self.stopping > 1:
                self._stop_on_signal(self.stopping)
            finishing = time.monotonic()
            valid_loss = self._validation_loss()
            record = self._record(valid_loss, finished)
            improved = valid_loss < state.best_valid_loss
            if improved:
                state.best_valid_loss, state.best_epoch = valid_loss, state.epoch + 1
            if finished:
                self._finish_epoch(valid_loss)
                if config.patience and state.bad_epochs >= config.patience and state.epoch < config.epochs:
                    stop_reason = "early_stop"
            elif self.stopping:
                stop_reason = "max_time"
            if improved and self.world.is_main:
                save_checkpoint(self._checkpoint(with_state=False), self.out)
            self._save_state()
            self.finish_seconds = time.monotonic() - finishing
            log.info(_epoch_line(record, config.epochs, improved, self._elapsed()))
            if state.epoch < config.epochs:
                _, _, signum = self._agree(0.0, False, deadline)
                if signum > 1:
                    self._stop_on_signal(signum)  # it came during validation: all is saved already
                if signum == 1 and stop_reason == "completed":  # the budget ran out: all is saved; no step begins
                    stop_reason = "max_time"

        if stop_reason == "early_stop":
            log.info("early stop: no improvement in validation for %d epochs", state.bad_epochs)
        elif stop_reason == "max_time":
            over = time.monotonic() - self.started - config.max_time
            if over > max(0.5, 0.05 * config.max_time):  # a budget shorter than one step, validation and saves
                log.warning("stopped %.1f s past the --max-time budget of %g s (validating and saving took %.1f s); "
                            "continue with --resume %s", over, config.max_time, self.finish_seconds, self.out)
            else:
                log.info("stopped at the --max-time budget (allowing %.1f s of it for validating and saving); "
                         "continue with --resume %s", self.kept_for_finish, self.out)
        best = state.best_valid_loss
        return TrainResult(
            checkpoint=str(self.out),
            last_checkpoint=str(last_state_path(self.out)),
            metrics=str(self.metrics),
            epochs=state.epoch,
            steps=state.step,
            best_valid_ppl=math.exp(min(best, 700)) if math.isfinite(best) else math.inf,
            best_epoch=state.best_epoch,
            stop_reason=stop_reason,
            elapsed_seconds=self._elapsed(),
            process_seconds=time.monotonic() - self.started,
            precision=self.precision,
            history=state.history,
            validation=self.validation_source,
        )

    def _train_epoch(self, deadline: float | None) -> bool:
        """Train from ``state.batch`` to the end of the epoch, or until ``deadline``; True if the epoch finished."""
        config, state, model, batches = self.config, self.state, self.model, self.batches
        model.train()
        if config.schedule == "epoch":
            self._set_lr(config.lr / config.lr_decay ** max(0, state.epoch + 1 - config.decay_start))
        self.hiddens = [model.init_hidden(batches.batch_size, self.device) if hidden is None else hidden
                        for hidden in self.hiddens]
        parameters = [p for p in model.parameters() if p.requires_grad]
        # compact, so that loss, ppl and tok/s stay in view at 80 columns (the rate and lr are in the epoch lines)
        bar = tqdm(total=len(batches), initial=state.batch, desc=f"epoch {state.epoch + 1}/{config.epochs}",
                   unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True,
                   bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {elapsed}<{remaining}{postfix}",
                   disable=None if self.progress else True)
        self.epoch_started, self.epoch_tokens_at_start = time.monotonic(), state.epoch_tokens
        try:
            while state.batch < len(batches):
                poll_threads()
                if config.schedule == "cosine":
                    self._set_lr(_cosine_lr(config, state.step, len(batches) * config.epochs))
                windows = [[t.to(self.device, non_blocking=True) for t in stream[state.batch]]
                           for stream in self.streams]  # (inputs, targets) of each direction
                targets = windows[0][1]
                with autocast(self.device, self.precision):
                    loss, hiddens = self.step_module(windows, [detach_hidden(h) for h in self.hiddens])
                self.optimizer.zero_grad()
                loss.backward()
                # the global norm is computed (and clipped to --clip) every step: a non-finite one stops training.
                # It is checked first: it is the same in every process, so all of them stop together.
                norm, scale = self._clip(parameters)
                loss_value = loss.item()
                for what, value in (("gradient norm", norm), ("loss", loss_value)):
                    if not math.isfinite(value):
                        kept = f"{self.out} keeps the best model so far; " if self.out.exists() else ""
                        raise TrainingError(f"the training {what} became {value} at step {state.step + 1}, which "
                                            f"was not applied; {kept}try a lower --lr or a smaller --clip")
                state.epoch_clipped_steps += int(config.clip > 0 and norm > config.clip)
                if config.log_gradients:
                    self.gradient_steps.append(state.step + 1)
                    self.gradient_norms.append(norm)
                if scale is None:
                    self.optimizer.step()
                else:
                    self._step_with_lr(state.lr * scale)
                self.hiddens = hiddens
                state.step += 1
                state.epoch_steps += 1
                state.batch += 1
                state.epoch_tokens += targets.numel() * self.world.size
                loss_sum, save, self.stopping = self._agree(loss_value * targets.numel(), self._save_due(), deadline)
                state.epoch_loss_sum += loss_sum
                bar.update(1)
                if state.batch % 10 == 0 or state.batch == len(batches):
                    mean = state.epoch_loss_sum / state.epoch_tokens
                    bar.set_postfix_str(f"loss {mean:.3f} ppl {_ppl(math.exp(min(mean, 700)))} "
                                        f"{self._epoch_speed():,.0f} tok/s", refresh=False)
                if save:
                    self._save_state()
                if self.stopping:
                    break
                if config.valid_every and state.batch % config.valid_every == 0 and state.batch < len(batches):
                    break  # a validation inside the epoch (--valid-every); the epoch goes on after it
        finally:
            bar.close()
            state.epoch_seconds += time.monotonic() - self.epoch_started
        return state.batch == len(batches)

    def _clip(self, parameters: list[nn.Parameter]) -> tuple[float, float | None]:
        """The global gradient norm, clipped to --clip; and for plain SGD the clipping factor instead.

        For SGD without weight decay, clipping the gradients by a factor c is the same update as a step with
        the learning rate times c; that skips a read and a write of every gradient (measured in
        docs/benchmarks.md). Other optimizers get their gradients clipped in place.
        """
        config = self.config
        limit = config.clip if config.clip > 0 else math.inf
        if not _plain_sgd(config):
            return float(torch.nn.utils.clip_grad_norm_(parameters, limit)), None
        norm = gradient_norm(parameters)
        return norm, min(1.0, limit / (norm + 1e-6))  # clip_grad_norm_'s own factor

    def _step_with_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        for group in self.optimizer.param_groups:
            group["lr"] = self.state.lr

    def _agree(self, loss_sum: float, save_due: bool, deadline: float | None) -> tuple[float, bool, int]:
        """This step's training loss summed over every process, whether to save the resumable state now, and
        whether to stop (0: go on, 1: the --max-time budget is spent, else the number of the signal received).

        All processes decide together (one collective per step): a process that saved or stopped alone would
        leave the others waiting for it in a collective.
        """
        received = self.stop.received
        late = False
        if deadline is not None:
            self.kept_for_finish = self._time_to_finish()
            late = time.monotonic() >= deadline - self.kept_for_finish
        votes = [loss_sum, float(save_due), float(late), float(received == signal.SIGINT),
                 float(received == signal.SIGTERM)]
        if self.world.active:
            votes = distributed.all_reduce(votes, "sum", self.device)
        stop = signal.SIGTERM if votes[4] else signal.SIGINT if votes[3] else 1 if votes[2] else 0
        return votes[0], votes[1] > 0, int(stop)

    def _time_to_finish(self) -> float:
        """Seconds that the validation and the saves after a --max-time stop are expected to take, kept free of
        training so that the run ends within its budget: as long as this process's last ones took, or before the
        first, the time this epoch's training speed gives for half as many tokens as the validation text (scoring
        a token costs 0.35-0.45 of training on it for the PTB presets on a 2-core CPU). Every process scores its
        share of the validation text, as it trains its share of each batch."""
        if self.finish_seconds is not None:
            return self.finish_seconds
        return 0.5 * len(self.valid_ids) * len(self.reversed) / self._epoch_speed()

    def _epoch_speed(self) -> float:
        """Training tokens per second, over all processes, in this part of the epoch: the steps taken so far, the
        one just taken included (its tokens are counted before the per-step check), over the time they took."""
        trained = self.state.epoch_tokens - self.epoch_tokens_at_start
        return trained / max(time.monotonic() - self.epoch_started, 1e-9)

    def _save_state(self) -> Path:
        """Write the resumable state (the .last checkpoint) as training stands now; its path.
        With several processes every one must call this (they pool their states); rank 0 writes."""
        path = last_state_path(self.out)
        checkpoint = self._checkpoint(with_state=True)
        if self.world.is_main:
            save_checkpoint(checkpoint, path)
        self.last_saved = time.monotonic()
        return path

    def _save_due(self) -> bool:
        """Whether --save-every asks for the resumable state now (after the step just taken)."""
        steps, seconds = self.save_steps, self.save_seconds
        if steps is not None:
            return self.state.step % steps == 0
        return seconds is not None and time.monotonic() - self.last_saved >= seconds

    def _stop_on_signal(self, signum: int) -> None:
        """Save the resumable state where training stands (mid-epoch is fine) and stop with 128 + signal."""
        last = self._save_state()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"{name}: stopped after step {self.state.step} (epoch {self.state.epoch + 1}) and saved the state to "
            f"{last}; continue with: rnnlm train {self.config.dataset} --resume {self.out}", 128 + signum)

    def _validation_loss(self) -> float:
        """Mean nll per token over the whole validation stream, exactly as `rnnlm eval --context stream` scores it
        with ``--precision`` set to the training precision (bf16 scoring is about 1.6x faster on the presets).

        With several processes each scores its own share of the lines (from a fresh state) and the sums are pooled.
        """
        self.valid_losses = [self._direction_validation_loss(backward) for backward in self.reversed]
        loss = sum(self.valid_losses) / len(self.valid_losses)
        if not math.isfinite(loss):
            raise TrainingError("the validation loss is not finite; the model diverged (try a lower --lr)")
        return loss

    def _direction_validation_loss(self, backward: bool) -> float:
        """One direction's mean validation nll per token. The backward one reads each line right to left from a
        fresh state, as `rnnlm eval` scores that direction (batched by lines, so it is also the faster one)."""
        ids, eos = self.valid_ids, self.tokenizer.eos_id
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

    def _record(self, valid_loss: float, finished: bool) -> dict[str, Any]:
        """One validation's metrics: kept in the checkpoint and appended to the metrics file."""
        state = self.state
        train_loss = state.epoch_loss_sum / max(state.epoch_tokens, 1)
        record = {
            "epoch": state.epoch + 1,
            "complete": finished,
            "epoch_fraction": state.batch / len(self.batches),  # of the epoch trained when this validation ran
            "step": state.step,
            "train_loss": train_loss,
            "train_ppl": math.exp(min(train_loss, 700)),
            "valid_loss": valid_loss,
            "valid_ppl": math.exp(min(valid_loss, 700)),
            "lr": state.lr,
            "seconds": state.epoch_seconds,
            "elapsed_seconds": self._elapsed(),
            "process": state.earlier_processes + 1,
            "tokens_per_second": state.epoch_tokens / max(state.epoch_seconds, 1e-9),
            "clipped_fraction": state.epoch_clipped_steps / max(state.epoch_steps, 1),
        }
        if len(self.valid_losses) == 2:
            record["valid_ppl_forward"], record["valid_ppl_backward"] = (math.exp(min(loss, 700))
                                                                         for loss in self.valid_losses)
        if self.config.log_gradients:
            record.update(self._gradient_summary())
        state.history.append(record)
        if self.world.is_main:
            with open(self.metrics, "a", encoding="utf-8") as metrics:
                metrics.write(json.dumps(record) + "\n")
        return record

    def _gradient_summary(self) -> dict[str, Any]:
        """--log-gradients: this epoch's gradient norms and the hidden-state probe on the validation text."""
        first = self.state.step - self.state.epoch_steps  # steps after this one belong to the current epoch
        norms = [norm for step, norm in zip(self.gradient_steps, self.gradient_norms) if step > first]
        summary: dict[str, Any] = {"gradient_norm_mean": sum(norms) / len(norms) if norms else None,
                                   "gradient_norm_max": max(norms, default=None)}
        probe = _probe_window(self.valid_ids[::-1] if self.reversed == [True] else self.valid_ids)
        if probe is not None:
            ids, targets = (torch.from_numpy(t).to(self.device) for t in probe)
            summary["hidden_gradient_norms"] = self.model.hidden_gradient_norms(ids, targets).tolist()
        return summary

    def _finish_epoch(self, valid_loss: float) -> None:
        """Move to the next epoch; count a bad epoch, and on the plateau schedule divide the rate.

        Only complete epochs are compared, so a run cut short by --max-time and resumed makes the
        same decisions as one that ran straight through.
        """
        state, config = self.state, self.config
        state.epoch += 1
        state.batch = 0
        state.epoch_loss_sum, state.epoch_tokens, state.epoch_seconds = 0.0, 0, 0.0
        state.epoch_steps = state.epoch_clipped_steps = 0
        self.hiddens = [None] * len(self.streams)
        if valid_loss < state.best_complete_loss:
            state.best_complete_loss, state.bad_epochs = valid_loss, 0
            return
        state.bad_epochs += 1
        if config.schedule == "plateau" and config.lr_decay > 1:
            self._set_lr(state.lr / config.lr_decay)

    def _set_lr(self, lr: float) -> None:
        self.state.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _checkpoint(self, with_state: bool) -> Checkpoint:
        state = self.state
        record: dict[str, Any] = {
            "config": asdict(self.config),
            "precision": self.precision,
            "processes": self.world.size,
            "epoch": state.epoch,
            "step": state.step,
            "best_valid_loss": state.best_valid_loss,
            "best_epoch": state.best_epoch,
            "history": list(state.history),
            "state": self._resume_state() if with_state else None,
        }
        if self.gradient_steps:
            record["gradients"] = {"step": torch.tensor(self.gradient_steps, dtype=torch.int64),
                                   "norm": torch.tensor(self.gradient_norms, dtype=torch.float32)}
        # state_dict() tensors share storage with the parameters (tied weights stay one tensor);
        # torch.save serialises them before training touches them again
        return Checkpoint(self.model.config, self.model.state_dict(), self.tokenizer.to_dict(), record,
                          self.data_record, current_versions())

    def _elapsed(self) -> float:
        """Wall-clock seconds of the whole run so far: the earlier processes' and this one's."""
        return self.state.earlier_seconds + time.monotonic() - self.started

    def _resume_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly. With several processes it is pooled from all of them (a
        collective): the hidden state of every stream, and each process's random generator."""
        saved = asdict(self.state)
        saved["earlier_seconds"] = self._elapsed()  # what the next process, resuming from here, adds to its own
        saved["earlier_processes"] = self.state.earlier_processes + 1
        saved["optimizer"] = self.optimizer.state_dict()  # the same in every process
        saved["rng"] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            saved["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world.active:
            saved["rng"]["ranks"] = distributed.gather(torch.get_rng_state())
        for key, hidden in zip(("hidden", "hidden_backward"), self.hiddens):
            if hidden is not None:
                parts = hidden if isinstance(hidden, tuple) else (hidden,)
                # (layers, batch, hidden) with every process's streams in order: the state of the whole batch
                saved[key] = [torch.cat(distributed.gather(h.detach().cpu()), dim=1) for h in parts]
        return saved

    def _restore(self, path: Path) -> None:
        config, dataset, model = self.config, self.dataset, self.model
        checkpoint = load_checkpoint(path, map_location=self.device)
        saved = checkpoint.train.get("state")
        if not saved:
            raise CheckpointError(f"{path}: holds no resume state")
        if checkpoint.tokenizer != dataset.tokenizer.to_dict():
            raise CheckpointError(f"{path}: was trained with a different tokenizer than {dataset.directory}'s")
        trained_on = checkpoint.data.get("splits", {}).get("train", {}).get("sha256")
        if trained_on != dataset.split_info("train")["sha256"]:
            raise CheckpointError(f"{path}: was trained on different text than {dataset.directory}'s train split")
        stored = {**checkpoint.model_config.to_dict(), "optimizer": checkpoint.train["config"]["optimizer"]}
        current = {**model.config.to_dict(), "optimizer": config.optimizer}  # automatic cutoffs resolved
        changed = [name for name in FIXED_ON_RESUME if stored.get(name) != current.get(name)]  # absent: unset
        if changed or stored["vocab_size"] != current["vocab_size"]:
            raise CheckpointError(f"{path}: its settings differ from this run's ({', '.join(changed) or 'vocab_size'})")
        model.load_state_dict(checkpoint.model_state)
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:  # torch.optim's groups come back with the saved settings
            group["weight_decay"] = config.weight_decay  # an explicit --weight-decay on resume applies
        if "gradients" in checkpoint.train:
            self.gradient_steps = checkpoint.train["gradients"]["step"].tolist()
            self.gradient_norms = checkpoint.train["gradients"]["norm"].tolist()
        self.state = _Progress(**{f.name: saved[f.name] for f in fields(_Progress) if f.name in saved})
        if config.lr != checkpoint.train["config"]["lr"]:
            self.state.lr = config.lr  # an explicit --lr on resume restarts the schedule from it
        self._set_lr(self.state.lr)
        rank, rows = self.world.rank, self.batches.batch_size
        generators = saved["rng"].get("ranks") or [saved["rng"]["torch"]]
        if rank < len(generators):
            torch.set_rng_state(generators[rank].cpu())
        else:  # more processes than the run had: a fresh, distinct generator (dropout masks differ from then)
            torch.manual_seed(config.seed + rank + self.state.step)
        if "cuda" in saved["rng"] and self.device.type == "cuda" and rank == 0:
            torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu(), self.device)
        for index, key in enumerate(("hidden", "hidden_backward")[: len(self.streams)]):
            if saved.get(key) and saved[key][0].shape[1] == config.batch_size:
                # the whole batch's state was saved; this process continues its own block of streams
                parts = tuple(h[:, rank * rows : (rank + 1) * rows].to(self.device) for h in saved[key])
                self.hiddens[index] = parts if model.config.cell == "lstm" else parts[0]


class _StopSignals:
    """While active, the first SIGINT or SIGTERM only sets ``received`` (training stops after the step and
    saves); the handlers that were there before come back at once, so a second signal acts immediately."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to that thread only
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __exit__(self, *exc_info: Any) -> None:
        self._restore()


class _LossStep(nn.Module):
    """One training forward pass as a module, so that DistributedDataParallel can wrap it: the mean loss over
    the directions trained and each direction's new hidden state. The checkpoint keeps the plain model's weights."""

    def __init__(self, model: RNNLanguageModel, reversed_directions: list[bool]) -> None:
        super().__init__()
        self.model = model
        self.reversed = reversed_directions

    def forward(self, windows: list[list[Tensor]], hiddens: list[Hidden | None]) -> tuple[Tensor, list[Hidden]]:
        losses, states = [], []
        for (inputs, targets), hidden, backward in zip(windows, hiddens, self.reversed):
            features, state = self.model.features(inputs, hidden, backward=backward)  # (B, T, H)
            losses.append(self.model.loss(features.reshape(-1, features.shape[-1]), targets.reshape(-1)))
            states.append(state)
        return (losses[0] if len(losses) == 1 else torch.stack(losses).mean()), states


def _training_device(name: str, world: distributed.World) -> torch.device:
    """The device to train on; under torchrun with GPUs, each process takes the one of its local rank."""
    device = resolve_device(name)
    if world.active and device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process {world.rank} has LOCAL_RANK {world.local_rank}, but this machine has "
                              f"{torch.cuda.device_count()} CUDA GPU(s); start at most that many per node")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def _probe_window(valid_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The hidden-state probe's input rows (B, T) and the token after each, from the start of the validation text:
    PROBE_ROWS rows of PROBE_STEPS tokens, fewer and shorter when the text is short (None under 3 tokens)."""
    steps = min(PROBE_STEPS, len(valid_ids) - 1)
    if steps < 2:
        return None
    rows = max(1, min(PROBE_ROWS, len(valid_ids) // (steps + 1)))
    window = np.asarray(valid_ids[: rows * (steps + 1)], dtype=np.int64).reshape(rows, steps + 1)
    return window[:, :-1], window[:, -1]


def _check_new_output(out: Path, force: bool) -> None:
    """A new run writes ``out`` and its .last companion; it replaces an existing run's files only with force."""
    if out.is_dir():
        raise TrainingError(f"{out}: is a directory; --out names the checkpoint file to write")
    existing = [path for path in (out, last_state_path(out)) if path.exists()]
    if existing and not force:
        raise TrainingError(f"{existing[0]}: already exists; add --force to replace it, or continue that run "
                            f"with --resume {out}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # a folder that exists but cannot take a file would only show at the first save, an epoch later
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.probe-"):
            pass
    except OSError as error:
        raise TrainingError(f"{out}: cannot write there ({error.strerror or error})") from None


def _cosine_lr(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up to config.lr over warmup_steps, then a half cosine down to 0 at total_steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(total_steps - config.warmup_steps, 1)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(step - config.warmup_steps, span) / span))


def _training_and_validation(dataset: Dataset, valid_fraction: float) -> tuple[np.ndarray, np.ndarray, str]:
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


def gradient_norm(parameters: list[nn.Parameter]) -> float:
    """The global L2 norm of the parameters' gradients. A sparse gradient (the embedding's, where rows read
    several times appear several times) is coalesced in place first, so that it is also ready for the step."""
    grads = []
    for parameter in parameters:
        if parameter.grad is not None and parameter.grad.is_sparse:
            parameter.grad = parameter.grad.coalesce()
            grads.append(parameter.grad.values())
        elif parameter.grad is not None:
            grads.append(parameter.grad)
    return float(torch.nn.utils.get_total_norm(grads))


def _sparse_embedding_gradient(config: TrainConfig, model: RNNLanguageModel, world: distributed.World,
                               device: torch.device) -> bool:
    """Whether the embedding's gradient can be sparse: where plain SGD applies it (the step with the clipping
    factor folded in, which adds just the rows read) and nothing else gives that matrix a dense gradient (tied
    output weights, word dropout). One process on a CPU only: DistributedDataParallel and GPUs keep the dense
    gradient this is tested against. A 2x200 step: the dense gradient's zero-filled 10,000 x 200 matrix, its
    norm and its update cost about 5% of the step (docs/benchmarks.md)."""
    model_config = model.config
    return (_plain_sgd(config) and not model_config.tie_weights and model_config.word_dropout == 0
            and not world.active and device.type == "cpu")


def _plain_sgd(config: TrainConfig) -> bool:
    """SGD without weight decay: its step is the learning rate times the gradient, so the trainer folds the
    clipping factor into the rate (``_Trainer._clip``) and can hand it a sparse embedding gradient."""
    return config.optimizer == "sgd" and not config.weight_decay


def _make_optimizer(config: TrainConfig, model: RNNLanguageModel) -> torch.optim.Optimizer | PlainSGD:
    if _plain_sgd(config):
        return PlainSGD(model.parameters(), lr=config.lr)  # torch.optim's update, without its start-up cost
    optimizer_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    return optimizer_class[config.optimizer](model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _describe(model: RNNLanguageModel) -> str:
    config = model.config
    softmax = f", adaptive softmax (cutoffs {', '.join(map(str, config.cutoffs or []))})" \
        if config.softmax == "adaptive" else ""
    return (f"a {config.layers} x {config.hidden_size} {config.cell}{' (tied)' if config.tie_weights else ''} "
            f"with {model.parameter_count():,} parameters{softmax}")


# one line per validation under this header, in columns that fit an 80-column terminal; * marks a new best
EPOCH_HEADER = f"{'epoch':<13}{'train ppl':>10}{'valid ppl':>11}   {'lr':>8}{'clipped':>8}{'tok/s':>9}{'elapsed':>9}"


def _epoch_line(record: dict[str, Any], epochs: int, improved: bool, elapsed: float) -> str:
    minutes, seconds = divmod(int(elapsed), 60)
    return (f"{epoch_label(record, epochs):<13}{_ppl(record['train_ppl']):>10}{_ppl(record['valid_ppl']):>11}"
            f"{' * ' if improved else '   '}{record['lr']:>8.4g}{100 * record['clipped_fraction']:>7.0f}%"
            f"{record['tokens_per_second']:>9,.0f}{f'{minutes}m{seconds:02d}s':>9}")


def _ppl(value: float) -> str:
    return f"{value:.2f}" if value < 1e7 else f"{value:.3g}"

