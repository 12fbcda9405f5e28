"""Training with truncated back-propagation through time, validation, early stopping and resume.

``train(config)`` writes two checkpoints: ``config.out`` always holds the model with the best
validation loss so far, and its companion ``<stem>.last<suffix>`` holds the latest state with
everything needed to continue (optimizer, random generators, position in the epoch).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rnnlm_cli.checkpoint import Checkpoint, current_versions, load_checkpoint, save_checkpoint
from rnnlm_cli.config import ARCHITECTURE, TrainConfig
from rnnlm_cli.data import BPTTBatches, Dataset, line_ends
from rnnlm_cli.errors import CheckpointError, ConfigError, DatasetError, TrainingError
from rnnlm_cli.evaluate import score_stream
from rnnlm_cli.model import ModelConfig, RNNLanguageModel, detach_hidden
from rnnlm_cli.runtime import resolve_device, seed_everything

log = logging.getLogger(__name__)

# settings that shape the weights and the optimizer state; a resumed run cannot change them
FIXED_ON_RESUME = tuple(name for name in ARCHITECTURE if name != "dropout") + ("optimizer",)
# settings of one invocation, not of the run: a resumed run starts from their defaults
PER_INVOCATION = ("max_time", "device")


@dataclass
class TrainResult:
    checkpoint: str
    last_checkpoint: str
    epochs: int  # epochs completed
    steps: int
    best_valid_ppl: float
    best_epoch: int
    stop_reason: str  # completed | early_stop | max_time
    elapsed_seconds: float  # this run's wall-clock time
    history: list[dict[str, Any]] = field(default_factory=list)
    validation: str = ""  # where the validation text came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def last_state_path(checkpoint: str | Path) -> Path:
    """Where the latest resumable state of the run whose best checkpoint is ``checkpoint`` lives."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.last{path.suffix}")


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
    best_valid_loss: float = math.inf  # over every validation, also of epochs cut short by --max-time
    best_epoch: int = 0
    best_complete_loss: float = math.inf  # over complete epochs only: what the schedule decides on
    bad_epochs: int = 0  # complete epochs in a row without a better validation loss
    epoch_loss_sum: float = 0.0  # training nll summed over the current epoch so far
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    epoch_steps: int = 0
    epoch_clipped_steps: int = 0  # steps of this epoch whose gradient norm was clipped
    history: list[dict[str, Any]] = field(default_factory=list)


def train(config: TrainConfig, resume: str | Path | None = None, progress: bool = True) -> TrainResult:
    """Train (or continue training) a model on ``config.dataset``; see the module docstring."""
    run_start = time.monotonic()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    dataset = Dataset(config.dataset)
    tokenizer = dataset.tokenizer
    train_ids, valid_ids, validation_source = _training_and_validation(dataset, config.valid_fraction)

    model = RNNLanguageModel(ModelConfig(tokenizer.vocab_size, **config.architecture())).to(device)
    optimizer = _make_optimizer(config, model)
    state = _Progress(lr=config.lr)
    hidden = None
    if resume is not None:
        state, hidden = _restore(resume_path(resume), config, dataset, model, optimizer, device)
        log.info("resuming %s at epoch %d, step %d", resume, state.epoch + 1, state.step)

    out = Path(config.out)
    last_out = last_state_path(out)
    batches = BPTTBatches(train_ids, config.batch_size, config.bptt, tokenizer.eos_id)
    data_record = {"dataset": str(Path(config.dataset).resolve()), "splits": dataset.fingerprints(),
                   "validation": validation_source}

    def make_checkpoint(with_state: bool, hidden_state=None) -> Checkpoint:
        record: dict[str, Any] = {
            "config": asdict(config),
            "epoch": state.epoch,
            "step": state.step,
            "best_valid_loss": state.best_valid_loss,
            "best_epoch": state.best_epoch,
            "history": list(state.history),
            "state": _resume_state(state, optimizer, hidden_state, device) if with_state else None,
        }
        # state_dict() tensors share storage with the parameters (tied weights stay one tensor);
        # torch.save serialises them before training touches them again
        return Checkpoint(model.config, model.state_dict(), tokenizer.to_dict(), record, data_record,
                          current_versions())

    stop_reason = "completed"
    if state.epoch >= config.epochs:
        log.info("the run has already trained %d epochs; raise --epochs to train more", state.epoch)
    while state.epoch < config.epochs and stop_reason == "completed":
        epoch_start = time.monotonic()
        hidden, finished = _train_epoch(model, optimizer, batches, config, state, hidden, device,
                                        deadline=None if config.max_time is None else run_start + config.max_time,
                                        progress=progress)
        state.epoch_seconds += time.monotonic() - epoch_start
        valid_loss = _validation_loss(model, valid_ids, tokenizer.eos_id, device)
        if not math.isfinite(valid_loss):
            raise TrainingError("the validation loss is not finite; the model diverged (try a lower --lr)")
        record = {
            "epoch": state.epoch + 1,
            "complete": finished,
            "train_loss": state.epoch_loss_sum / max(state.epoch_tokens, 1),
            "valid_loss": valid_loss,
            "lr": state.lr,
            "seconds": state.epoch_seconds,
            "tokens_per_second": state.epoch_tokens / max(state.epoch_seconds, 1e-9),
            "clipped_fraction": state.epoch_clipped_steps / max(state.epoch_steps, 1),
        }
        record["train_ppl"] = math.exp(min(record["train_loss"], 700))
        record["valid_ppl"] = math.exp(min(valid_loss, 700))
        state.history.append(record)
        improved = valid_loss < state.best_valid_loss
        if improved:
            state.best_valid_loss, state.best_epoch = valid_loss, state.epoch + 1
        if finished:
            _finish_epoch(state, valid_loss, config, optimizer)
            hidden = None
            if config.patience and state.bad_epochs >= config.patience and state.epoch < config.epochs:
                stop_reason = "early_stop"
        else:
            stop_reason = "max_time"
        if improved:
            save_checkpoint(make_checkpoint(with_state=False), out)
        save_checkpoint(make_checkpoint(with_state=True, hidden_state=hidden), last_out)
        log.info(_epoch_line(record, config.epochs, improved, time.monotonic() - run_start))

    if stop_reason == "early_stop":
        log.info("early stop: no improvement in validation for %d epochs", state.bad_epochs)
    elif stop_reason == "max_time":
        log.info("stopped at the --max-time budget; continue with --resume %s", out)
    return TrainResult(
        checkpoint=str(out),
        last_checkpoint=str(last_out),
        epochs=state.epoch,
        steps=state.step,
        best_valid_ppl=math.exp(state.best_valid_loss) if math.isfinite(state.best_valid_loss) else math.inf,
        best_epoch=state.best_epoch,
        stop_reason=stop_reason,
        elapsed_seconds=time.monotonic() - run_start,
        history=state.history,
        validation=validation_source,
    )


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


def _finish_epoch(state: _Progress, valid_loss: float, config: TrainConfig, optimizer) -> None:
    """Move to the next epoch; on a bad epoch, count it and divide the learning rate.

    Only complete epochs are compared, so a run cut short by --max-time and resumed makes the
    same decisions as one that ran straight through.
    """
    state.epoch += 1
    state.batch = 0
    state.epoch_loss_sum, state.epoch_tokens, state.epoch_seconds = 0.0, 0, 0.0
    state.epoch_steps = state.epoch_clipped_steps = 0
    if valid_loss < state.best_complete_loss:
        state.best_complete_loss, state.bad_epochs = valid_loss, 0
    else:
        state.bad_epochs += 1
        if config.lr_decay > 1:
            state.lr /= config.lr_decay
            for group in optimizer.param_groups:
                group["lr"] = state.lr


def _make_optimizer(config: TrainConfig, model: RNNLanguageModel) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr)


def _train_epoch(model, optimizer, batches: BPTTBatches, config: TrainConfig, state: _Progress, hidden,
                 device: torch.device, deadline: float | None, progress: bool):
    """Train from ``state.batch`` to the end of the epoch, or until ``deadline``.

    Returns the hidden state and whether the epoch finished.
    """
    model.train()
    if hidden is None:
        hidden = model.init_hidden(config.batch_size, device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    vocab_size = model.config.vocab_size
    bar = tqdm(total=len(batches), initial=state.batch, desc=f"epoch {state.epoch + 1}/{config.epochs}",
               unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True, disable=None if progress else True)
    started, tokens_at_start = time.monotonic(), state.epoch_tokens
    try:
        while state.batch < len(batches):
            inputs, targets = batches[state.batch]
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            hidden = detach_hidden(hidden)
            logits, hidden = model(inputs, hidden)  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(parameters, config.clip)
                state.epoch_clipped_steps += int(norm > config.clip)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"the training loss became {loss_value} at step {state.step + 1}; "
                    "try a lower --lr or a smaller --clip"
                )
            optimizer.step()
            state.step += 1
            state.epoch_steps += 1
            state.batch += 1
            state.epoch_loss_sum += loss_value * targets.numel()
            state.epoch_tokens += targets.numel()
            bar.update(1)
            if state.batch % 10 == 0 or state.batch == len(batches):
                mean = state.epoch_loss_sum / state.epoch_tokens
                speed = (state.epoch_tokens - tokens_at_start) / max(time.monotonic() - started, 1e-9)
                bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 700)):.1f}",
                                tok_s=f"{speed:,.0f}", lr=f"{state.lr:g}", refresh=False)
            if deadline is not None and time.monotonic() >= deadline:
                return hidden, state.batch == len(batches)
    finally:
        bar.close()
    return hidden, True


def _validation_loss(model: RNNLanguageModel, valid_ids: np.ndarray, eos_id: int, device: torch.device) -> float:
    """Mean nll per token over the whole validation stream, exactly as `rnnlm eval --context stream` scores it."""
    nll, _ = score_stream(model, torch.from_numpy(np.asarray(valid_ids, dtype=np.int64)), eos_id)
    model.train()
    return float(nll.sum(dtype=torch.float64)) / max(len(nll), 1)


def _resume_state(state: _Progress, optimizer, hidden, device: torch.device) -> dict[str, Any]:
    saved = asdict(state)
    saved["optimizer"] = optimizer.state_dict()
    saved["rng"] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        saved["rng"]["cuda"] = torch.cuda.get_rng_state(device)
    if hidden is not None:
        saved["hidden"] = [h.detach().cpu() for h in (hidden if isinstance(hidden, tuple) else (hidden,))]
    return saved


def _restore(path: Path, config: TrainConfig, dataset: Dataset, model: RNNLanguageModel, optimizer,
             device: torch.device):
    checkpoint = load_checkpoint(path, map_location=device)
    saved = checkpoint.train.get("state")
    if not saved:
        raise CheckpointError(f"{path}: holds no resume state")
    if checkpoint.tokenizer != dataset.tokenizer.to_dict():
        raise CheckpointError(f"{path}: was trained with a different tokenizer than {dataset.directory}'s")
    trained_on = checkpoint.data.get("splits", {}).get("train", {}).get("sha256")
    if trained_on != dataset.split_info("train")["sha256"]:
        raise CheckpointError(f"{path}: was trained on different text than {dataset.directory}'s train split")
    stored = {**checkpoint.model_config.to_dict(), "optimizer": checkpoint.train["config"]["optimizer"]}
    changed = [name for name in FIXED_ON_RESUME if stored[name] != getattr(config, name)]
    if changed or stored["vocab_size"] != dataset.tokenizer.vocab_size:
        raise CheckpointError(f"{path}: its settings differ from this run's ({', '.join(changed) or 'vocab_size'})")
    model.load_state_dict(checkpoint.model_state)
    optimizer.load_state_dict(saved["optimizer"])
    state = _Progress(**{f.name: saved[f.name] for f in fields(_Progress) if f.name in saved})
    if config.lr != checkpoint.train["config"]["lr"]:
        state.lr = config.lr  # an explicit --lr on resume restarts the schedule from it
    for group in optimizer.param_groups:
        group["lr"] = state.lr
    torch.set_rng_state(saved["rng"]["torch"].cpu())
    if "cuda" in saved["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu(), device)
    hidden = None
    if saved.get("hidden"):
        parts = tuple(h.to(device) for h in saved["hidden"])
        hidden = parts if model.config.cell == "lstm" else parts[0]
    return state, hidden


def _epoch_line(record: dict[str, Any], epochs: int, improved: bool, elapsed: float) -> str:
    minutes, seconds = divmod(int(elapsed), 60)
    partial = "" if record["complete"] else " (partial)"
    mark = " *" if improved else ""
    return (
        f"epoch {record['epoch']}/{epochs}{partial} | train ppl {record['train_ppl']:.2f} | "
        f"valid ppl {record['valid_ppl']:.2f}{mark} | lr {record['lr']:g} | "
        f"{record['tokens_per_second']:,.0f} tok/s | {minutes}m{seconds:02d}s"
    )
