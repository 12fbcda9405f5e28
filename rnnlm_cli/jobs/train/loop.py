"""The training loop: build the run, then train epoch after epoch, step after step, validating and saving."""

from __future__ import annotations

import logging
import math
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rnnlm_cli import distributed
from rnnlm_cli.checkpoint import Checkpoint, current_versions
from rnnlm_cli.config import TrainConfig
from rnnlm_cli.data import BPTTBatches, Dataset
from rnnlm_cli.errors import ConfigError, TrainingError, TrainingInterrupted
from rnnlm_cli.jobs.train import report
from rnnlm_cli.jobs.train.budget import Budget
from rnnlm_cli.jobs.train.run import Progress, ResumePlan, RunFiles, resume_state
from rnnlm_cli.jobs.train.step import LearningRate, LossStep, Optimization
from rnnlm_cli.jobs.train.validation import (
    GradientLog,
    Validator,
    training_and_validation,
)
from rnnlm_cli.model import Hidden, ModelConfig, RNNLanguageModel, detach_hidden
from rnnlm_cli.runtime import (
    autocast,
    configure_threads,
    keep_freed_memory,
    poll_threads,
    resolve_device,
    resolve_precision,
    seed_everything,
)

log = logging.getLogger(__name__)


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


def train(config: TrainConfig, resume: str | Path | ResumePlan | None = None, progress: bool = True,
          started: float | None = None) -> TrainResult:
    """Train (or continue training) a model on ``config.dataset``; see ``rnnlm_cli.jobs.train``.

    ``resume`` continues a run from its latest state: a plan from ``plan_resume`` (which also gives the config to
    pass), or the run's checkpoint, whose state is then continued with ``config`` as given. ``started`` is the
    ``time.monotonic()`` reading that the ``max_time`` budget and this process's seconds count from: by default
    this call; the CLI passes its command's start, so that the budget covers importing torch too.
    """
    plan = ResumePlan.open(resume) if isinstance(resume, (str, Path)) else resume
    files = RunFiles(config.out, writes=distributed.world_from_env().is_main)
    with files.lock():
        try:
            return Trainer(config, files, plan, progress, Budget(config.max_time, config.save_every, started)).run()
        finally:
            distributed.stop()


class Trainer:
    def __init__(self, config: TrainConfig, files: RunFiles, plan: ResumePlan | None, progress: bool,
                 budget: Budget) -> None:
        self.config, self.files, self.budget = config, files, budget
        if plan is None:
            files.check_new(config.force)
        self.world = distributed.world_from_env()
        self.progress = progress and self.world.is_main
        self.device = _training_device(config.device, self.world)
        self.precision = resolve_precision(config.precision, self.device)
        keep_freed_memory()
        seed_everything(config.seed)
        self.dataset = dataset = Dataset(config.dataset)
        train_ids, valid_ids, self.validation_source = training_and_validation(dataset, config.valid_fraction)
        model_config = ModelConfig(dataset.tokenizer.vocab_size, **config.architecture())
        self.model = model = RNNLanguageModel(model_config).to(self.device)
        threads = configure_threads(config.threads, model.multiply_adds_per_token())
        # one stream per direction trained: reversed (right to left) or not; reversal is a view, never a copy
        self.streams = [BPTTBatches(train_ids[::-1] if backward else train_ids, config.batch_size, config.bptt,
                                    dataset.tokenizer.eos_id, shard=(self.world.rank, self.world.size))
                        for backward in model_config.readings()]
        self.batches = self.streams[0]
        if self.world.rank:
            torch.manual_seed(config.seed + self.world.rank)  # its own dropout masks; the weights come from rank 0
        self.optimization = Optimization(config, model, self.world, self.device)
        self.schedule = LearningRate(config, len(self.batches))
        self.validator = Validator(model, valid_ids, dataset.tokenizer.eos_id, self.device, self.precision,
                                   self.world)
        self.gradients = GradientLog()
        self.state = Progress(lr=config.lr)
        self.hiddens: list[Hidden | None] = [None] * len(self.streams)  # the state carried in each direction
        self.stopping = 0  # why the last epoch stopped early: 1 for --max-time, else the signal's number
        self.epoch_started, self.epoch_tokens_at_start = budget.clock(), 0  # where train_epoch last began
        if plan is not None:
            self._restore(plan)
            log.info("resuming %s at epoch %d, step %d", plan.given, self.state.epoch + 1, self.state.step)
        else:
            files.clear_metrics()
        self.step_module: nn.Module = LossStep(model, model_config.readings())
        if self.world.active:
            distributed.start(self.world, self.device.type)
            # one process's gradients, averaged over all of them during the backward pass
            # (a batch without targets in one of the adaptive softmax's clusters leaves that cluster unused)
            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=model_config.softmax == "adaptive")
        self.data_record = {"dataset": str(Path(config.dataset).resolve()), "splits": dataset.fingerprints(),
                            "validation": self.validation_source}
        log.info("training %s (%s)", report.describe(model), f"preset {config.preset}" if config.preset else
                 "no preset")
        log.info("on %s in %s%s; %s batches of %d x %d tokens per epoch%s", self.device, self.precision,
                 f", {threads} thread{'s' if threads > 1 else ''}" if self.device.type == "cpu" else "",
                 f"{len(self.batches):,}", config.batch_size, config.bptt,
                 f", on {self.world.size} processes with {self.batches.batch_size} streams each"
                 if self.world.active else "")

    def run(self) -> TrainResult:
        config, state, budget = self.config, self.state, self.budget
        stop_reason = "completed"
        if state.epoch >= config.epochs:
            log.info("the run has already trained %d epochs; raise --epochs to train more", state.epoch)
        else:
            log.info(report.EPOCH_HEADER)  # of the lines logged after each validation
        with budget:
            while state.epoch < config.epochs and stop_reason == "completed":
                finished = self.train_epoch()
                if self.stopping > 1:
                    self._stop_on_signal(self.stopping)
                finishing = budget.clock()
                valid_loss = self.validator.loss()
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
                if improved and self.files.writes:  # only the main process builds and writes it
                    self.files.save_best(self._checkpoint(with_state=False))
                self._save_state()
                budget.finished(finishing)
                log.info(report.epoch_line(record, config.epochs, improved, self._elapsed()))
                if state.epoch < config.epochs:
                    _, _, signum = self._agree(0.0, False)
                    if signum > 1:
                        self._stop_on_signal(signum)  # it came during validation: all is saved already
                    if signum == 1 and stop_reason == "completed":  # the budget ran out: all is saved; no step begins
                        stop_reason = "max_time"
        report.log_stop(stop_reason, state.bad_epochs, budget, self.files.best)
        best = state.best_valid_loss
        return TrainResult(
            checkpoint=str(self.files.best), last_checkpoint=str(self.files.last), metrics=str(self.files.metrics),
            epochs=state.epoch, steps=state.step,
            best_valid_ppl=math.exp(min(best, 700)) if math.isfinite(best) else math.inf,
            best_epoch=state.best_epoch, stop_reason=stop_reason, elapsed_seconds=self._elapsed(),
            process_seconds=budget.seconds(), precision=self.precision, history=state.history,
            validation=self.validation_source)

    def train_epoch(self) -> bool:
        """Train from ``state.batch`` to the end of the epoch, or until the budget stops it; True if it finished."""
        config, state, model, batches = self.config, self.state, self.model, self.batches
        optimization = self.optimization
        model.train()
        self._set_lr(self.schedule.epoch_start(state.epoch, state.lr))
        self.hiddens = [model.init_hidden(batches.batch_size, self.device) if hidden is None else hidden
                        for hidden in self.hiddens]
        bar = report.epoch_bar(len(batches), state.batch, state.epoch, config.epochs, self.progress)
        self.epoch_started, self.epoch_tokens_at_start = self.budget.clock(), state.epoch_tokens
        try:
            while state.batch < len(batches):
                poll_threads()
                self._set_lr(self.schedule.step(state.step, state.lr))
                windows = [[t.to(self.device, non_blocking=True) for t in stream[state.batch]]
                           for stream in self.streams]  # (inputs, targets) of each direction
                targets = windows[0][1]
                with autocast(self.device, self.precision):
                    loss, hiddens = self.step_module(windows, [detach_hidden(h) for h in self.hiddens])
                optimization.optimizer.zero_grad()
                loss.backward()
                # the global norm is computed (and clipped to --clip) every step: a non-finite one stops training.
                # It is checked first: it is the same in every process, so all of them stop together.
                norm, scale = optimization.clip()
                loss_value = loss.item()
                for what, value in (("gradient norm", norm), ("loss", loss_value)):
                    if not math.isfinite(value):
                        kept = f"{self.files.best} keeps the best model so far; " if self.files.best.exists() else ""
                        raise TrainingError(f"the training {what} became {value} at step {state.step + 1}, which "
                                            f"was not applied; {kept}try a lower --lr or a smaller --clip")
                state.epoch_clipped_steps += int(config.clip > 0 and norm > config.clip)
                if config.log_gradients:
                    self.gradients.record(state.step + 1, norm)
                optimization.apply(state.lr, scale)
                self.hiddens = hiddens
                state.step += 1
                state.epoch_steps += 1
                state.batch += 1
                state.epoch_tokens += targets.numel() * self.world.size
                loss_sum, save, self.stopping = self._agree(loss_value * targets.numel(),
                                                            self.budget.save_due(state.step))
                state.epoch_loss_sum += loss_sum
                bar.update(1)
                if state.batch % 10 == 0 or state.batch == len(batches):
                    report.bar_postfix(bar, state.epoch_loss_sum / state.epoch_tokens, self._epoch_speed())
                if save:
                    self._save_state()
                if self.stopping:
                    break
                if config.valid_every and state.batch % config.valid_every == 0 and state.batch < len(batches):
                    break  # a validation inside the epoch (--valid-every); the epoch goes on after it
        finally:
            bar.close()
            state.epoch_seconds += self.budget.clock() - self.epoch_started
        return state.batch == len(batches)

    def _agree(self, loss_sum: float, save_due: bool) -> tuple[float, bool, int]:
        """This step's training loss summed over every process, whether to save the resumable state now, and
        whether to stop (0: go on, 1: the --max-time budget is spent, else the number of the signal received).

        All processes decide together (one collective per step): a process that saved or stopped alone would
        leave the others waiting for it in a collective.
        """
        received = self.budget.received
        late = self.budget.out_of_time(self._first_finish_estimate)
        votes = [loss_sum, float(save_due), float(late), float(received == signal.SIGINT),
                 float(received == signal.SIGTERM)]
        if self.world.active:
            votes = distributed.all_reduce(votes, "sum", self.device)
        stop = signal.SIGTERM if votes[4] else signal.SIGINT if votes[3] else 1 if votes[2] else 0
        return votes[0], votes[1] > 0, int(stop)

    def _first_finish_estimate(self) -> float:
        """Before the first validation, the seconds it and the saves are expected to take: the time this epoch's
        training speed gives for half as many tokens as the validation text (scoring a token costs 0.35-0.45 of
        training on it for the PTB presets on a 2-core CPU). Every process scores its share of the validation
        text, as it trains its share of each batch."""
        return 0.5 * len(self.validator.valid_ids) * len(self.streams) / self._epoch_speed()

    def _epoch_speed(self) -> float:
        """Training tokens per second, over all processes, in this part of the epoch: the steps taken so far, the
        one just taken included (its tokens are counted before the per-step check), over the time they took."""
        trained = self.state.epoch_tokens - self.epoch_tokens_at_start
        return trained / max(self.budget.clock() - self.epoch_started, 1e-9)

    def _elapsed(self) -> float:
        """Wall-clock seconds of the whole run so far: the earlier processes' and this one's."""
        return self.state.earlier_seconds + self.budget.seconds()

    def _record(self, valid_loss: float, finished: bool) -> dict[str, Any]:
        """One validation's metrics: kept in the checkpoint and appended to the metrics file."""
        state = self.state
        record = report.validation_record(state, valid_loss, finished, len(self.batches), self._elapsed())
        losses = self.validator.losses
        if len(losses) == 2:
            record["valid_ppl_forward"], record["valid_ppl_backward"] = (math.exp(min(loss, 700)) for loss in losses)
        if self.config.log_gradients:
            record.update(self.gradients.summary(after_step=state.step - state.epoch_steps))
            probe = self.validator.probe()
            if probe is not None:
                record["hidden_gradient_norms"] = probe
        state.history.append(record)
        self.files.append_metrics(record)
        return record

    def _finish_epoch(self, valid_loss: float) -> None:
        """Move to the next epoch; count a bad epoch, and on the plateau schedule divide the rate.

        Only complete epochs are compared, so a run cut short by --max-time and resumed makes the
        same decisions as one that ran straight through.
        """
        state = self.state
        state.next_epoch()
        self.hiddens = [None] * len(self.streams)
        if valid_loss < state.best_complete_loss:
            state.best_complete_loss, state.bad_epochs = valid_loss, 0
            return
        state.bad_epochs += 1
        self._set_lr(self.schedule.bad_epoch(state.lr))

    def _set_lr(self, lr: float) -> None:
        self.state.lr = lr
        self.optimization.set_lr(lr)

    def _checkpoint(self, with_state: bool) -> Checkpoint:
        state = self.state
        record: dict[str, Any] = {
            "config": asdict(self.config), "precision": self.precision, "processes": self.world.size,
            "epoch": state.epoch, "step": state.step, "best_valid_loss": state.best_valid_loss,
            "best_epoch": state.best_epoch, "history": list(state.history),
            "state": resume_state(state, self._elapsed(), self.optimization.state_dict(), self.hiddens, self.world,
                                  self.device) if with_state else None,
        }
        gradients = self.gradients.to_checkpoint()
        if gradients is not None:
            record["gradients"] = gradients
        # state_dict() tensors share storage with the parameters (tied weights stay one tensor);
        # torch.save serialises them before training touches them again
        return Checkpoint(self.model.config, self.model.state_dict(), self.dataset.tokenizer.to_dict(), record,
                          self.data_record, current_versions())

    def _save_state(self) -> Path:
        """Write the resumable state (the .last checkpoint) as training stands now; its path.
        With several processes every one must call this (they pool their states); rank 0 writes."""
        path = self.files.save_last(self._checkpoint(with_state=True))
        self.budget.saved()
        return path

    def _stop_on_signal(self, signum: int) -> None:
        """Save the resumable state where training stands (mid-epoch is fine) and stop with the signal's exit code."""
        last = self._save_state()
        raise TrainingInterrupted(report.interrupted(signum, self.state, last, self.config), signum)

    def _restore(self, plan: ResumePlan) -> None:
        config, model = self.config, self.model
        plan.check(self.dataset, model.config, config.optimizer)
        model.load_state_dict(plan.checkpoint.model_state)
        self.state = plan.progress(config)
        self.optimization.load_state_dict(plan.saved["optimizer"], self.state.lr)
        self.gradients.restore(plan.checkpoint.train.get("gradients"))
        plan.restore_generators(config, self.world, self.device, self.state.step)
        self.hiddens = plan.hiddens(len(self.streams), config.batch_size, self.batches.batch_size, self.world.rank,
                                    model.config.cell == "lstm", self.device)


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
