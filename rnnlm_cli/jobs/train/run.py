"""A run's files, the state it saves, and how a resumed run picks it up again.

A run writes ``NAME.pt`` (the best model so far), ``NAME.last.pt`` (the latest state, with everything needed to
continue exactly: optimizer, random generators, hidden states, position in the epoch) and ``NAME.metrics.jsonl``
(one JSON line per validation). ``ResumePlan`` opens a run to continue, loading its checkpoint once, and holds the
rules of a resumed run for the CLI and for Python callers alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from rnnlm_cli import distributed
from rnnlm_cli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rnnlm_cli.config import FIXED_ON_RESUME, TrainConfig
from rnnlm_cli.data import Dataset
from rnnlm_cli.errors import CheckpointError, ConfigError, TrainingError
from rnnlm_cli.model import Hidden, ModelConfig

log = logging.getLogger(__name__)

# settings of one invocation, not of the run: a resumed run starts from their defaults
PER_INVOCATION = ("max_time", "device", "force", "threads")
HIDDEN_KEYS = ("hidden", "hidden_backward")  # the saved state of each direction's streams


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


@dataclass
class Progress:
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

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.epoch_loss_sum, self.epoch_tokens, self.epoch_seconds = 0.0, 0, 0.0
        self.epoch_steps = self.epoch_clipped_steps = 0


class RunFiles:
    """The files of the run whose best checkpoint is ``out``; only the main process writes them."""

    def __init__(self, out: str | Path, writes: bool = True) -> None:
        self.best = Path(out)
        self.last = last_state_path(self.best)
        self.metrics = metrics_path(self.best)
        self.writes = writes

    def check_new(self, force: bool) -> None:
        """A new run writes ``best`` and its .last companion; it replaces an existing run's files only with force."""
        out = self.best
        if out.is_dir():
            raise TrainingError(f"{out}: is a directory; --out names the checkpoint file to write")
        existing = [path for path in (out, self.last) if path.exists()]
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

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an advisory lock on ``best`` (the file ``.NAME.lock`` beside it) while the run writes it, so that a
        second run on the same output is refused instead of both reporting success with one model lost. The lock
        goes with the process however it ends; the file is removed at the end of the run (or left by a killed one,
        to be reused)."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            yield
            return
        out = self.best
        if not self.writes or not out.parent.is_dir():  # the output checks report a folder that cannot be made
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
                raise TrainingError(f"{out}: another rnnlm train is writing it ({owner}); wait for it to end, or "
                                    f"give another --out") from None
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

    def clear_metrics(self) -> None:
        if self.writes:
            self.metrics.unlink(missing_ok=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.writes:
            with open(self.metrics, "a", encoding="utf-8") as metrics:
                metrics.write(json.dumps(record) + "\n")

    def save_best(self, checkpoint: Checkpoint) -> None:
        if self.writes:
            save_checkpoint(checkpoint, self.best)

    def save_last(self, checkpoint: Checkpoint) -> Path:
        if self.writes:
            save_checkpoint(checkpoint, self.last)
        return self.last


def resume_state(progress: Progress, elapsed: float, optimizer: dict[str, Any], hiddens: list[Hidden | None],
                 world: distributed.World, device: torch.device) -> dict[str, Any]:
    """Everything needed to continue exactly. With several processes it is pooled from all of them (a
    collective): the hidden state of every stream, and each process's random generator."""
    saved = asdict(progress)
    saved["earlier_seconds"] = elapsed  # what the next process, resuming from here, adds to its own
    saved["earlier_processes"] = progress.earlier_processes + 1
    saved["optimizer"] = optimizer  # the same in every process
    saved["rng"] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        saved["rng"]["cuda"] = torch.cuda.get_rng_state(device)
    if world.active:
        saved["rng"]["ranks"] = distributed.gather(torch.get_rng_state())
    for key, hidden in zip(HIDDEN_KEYS, hiddens):
        if hidden is not None:
            parts = hidden if isinstance(hidden, tuple) else (hidden,)
            # (layers, batch, hidden) with every process's streams in order: the state of the whole batch
            saved[key] = [torch.cat(distributed.gather(h.detach().cpu()), dim=1) for h in parts]
    return saved


class ResumePlan:
    """A run to continue from its latest state: the file it resumes from and that file's contents, loaded once."""

    def __init__(self, path: Path, checkpoint: Checkpoint, best: Path, given: str | Path | None = None) -> None:
        self.given = path if given is None else given  # the checkpoint named to resume, as named
        self.path = path  # the file with the resume state
        self.checkpoint = checkpoint
        self.best = best  # the run's best-model checkpoint, which the resumed run keeps writing
        self.saved: dict[str, Any] = checkpoint.train.get("state") or {}

    @classmethod
    def open(cls, checkpoint: str | Path) -> ResumePlan:
        """The run whose best checkpoint (or its .last companion) is ``checkpoint``."""
        path = Path(checkpoint)
        companion = last_state_path(path)
        if companion.exists():
            loaded = load_checkpoint(companion)
            if not loaded.resumable:
                raise CheckpointError(f"{companion}: holds no resume state")
            return cls(companion, loaded, best_checkpoint_path(path), checkpoint)
        loaded = load_checkpoint(path) if path.exists() else None
        if loaded is None or not loaded.resumable:
            raise CheckpointError(f"{checkpoint}: nothing to resume from (no {companion.name} beside it)")
        return cls(path, loaded, best_checkpoint_path(path), checkpoint)

    def config(self, dataset: str, options: dict[str, Any]) -> TrainConfig:
        """The run's stored training config for ``dataset``, with ``options`` (the ones given now) applied.

        Options that shape the weights or the optimizer state cannot change; ``preset`` and ``force`` belong to a
        new run; ``out`` may only name the run's own checkpoint."""
        stored = self.checkpoint.train.get("config")
        if not stored:
            raise CheckpointError(f"{self.path}: holds no training config to resume")
        known = {f.name for f in fields(TrainConfig)}
        merged = {key: value for key, value in stored.items() if key in known and key not in PER_INVOCATION}
        for key, value in options.items():
            if key in FIXED_ON_RESUME and value != merged.get(key):
                raise ConfigError(f"cannot change --{key.replace('_', '-')} when resuming ({merged.get(key)} in the "
                                  f"run)")
            if merged.get(key) != value:
                log.info("resuming with %s = %s (was %s)", key, value, merged.get(key))
            merged[key] = value
        return TrainConfig(**{**merged, "dataset": dataset, "out": str(self.best)})

    def check(self, dataset: Dataset, model_config: ModelConfig, optimizer: str) -> None:
        """The run can continue on ``dataset`` with a model of ``model_config`` (automatic cutoffs resolved)."""
        checkpoint, path = self.checkpoint, self.path
        if checkpoint.tokenizer != dataset.tokenizer.to_dict():
            raise CheckpointError(f"{path}: was trained with a different tokenizer than {dataset.directory}'s")
        trained_on = checkpoint.data.get("splits", {}).get("train", {}).get("sha256")
        if trained_on != dataset.split_info("train")["sha256"]:
            raise CheckpointError(f"{path}: was trained on different text than {dataset.directory}'s train split")
        stored = {**checkpoint.model_config.to_dict(), "optimizer": checkpoint.train["config"]["optimizer"]}
        current = {**model_config.to_dict(), "optimizer": optimizer}
        changed = [name for name in FIXED_ON_RESUME if stored.get(name) != current.get(name)]  # absent: unset
        if changed or stored["vocab_size"] != current["vocab_size"]:
            raise CheckpointError(f"{path}: its settings differ from this run's ({', '.join(changed) or 'vocab_size'})")

    def progress(self, config: TrainConfig) -> Progress:
        """Where the run stands; an explicit --lr given now restarts the schedule from it."""
        saved = self.saved
        progress = Progress(**{f.name: saved[f.name] for f in fields(Progress) if f.name in saved})
        if config.lr != self.checkpoint.train["config"]["lr"]:
            progress.lr = config.lr
        return progress

    def restore_generators(self, config: TrainConfig, world: distributed.World, device: torch.device,
                           step: int) -> None:
        rank = world.rank
        generators = self.saved["rng"].get("ranks") or [self.saved["rng"]["torch"]]
        if rank < len(generators):
            torch.set_rng_state(generators[rank].cpu())
        else:  # more processes than the run had: a fresh, distinct generator (dropout masks differ from then)
            torch.manual_seed(config.seed + rank + step)
        if "cuda" in self.saved["rng"] and device.type == "cuda" and rank == 0:
            torch.cuda.set_rng_state(self.saved["rng"]["cuda"].cpu(), device)

    def hiddens(self, directions: int, batch_size: int, rows: int, rank: int, lstm: bool,
                device: torch.device) -> list[Hidden | None]:
        """Each direction's hidden state for this process's ``rows`` streams (None where the batch changed)."""
        hiddens: list[Hidden | None] = [None] * directions
        for index, key in enumerate(HIDDEN_KEYS[:directions]):
            saved = self.saved.get(key)
            if saved and saved[0].shape[1] == batch_size:
                # the whole batch's state was saved; this process continues its own block of streams
                parts = tuple(h[:, rank * rows : (rank + 1) * rows].to(device) for h in saved)
                hiddens[index] = parts if lstm else parts[0]
        return hiddens


def plan_resume(checkpoint: str | Path, dataset: str, options: dict[str, Any], out: str | None = None,
                preset: str | None = None, force: bool = False) -> tuple[TrainConfig, ResumePlan]:
    """The config and the plan to continue the run of ``checkpoint`` on ``dataset`` with ``options`` given now.
    ``out``, ``preset`` and ``force`` are refused: a resumed run keeps its own checkpoint and settings."""
    if preset is not None:
        raise ConfigError("--preset starts a new run; a resumed run keeps its own settings")
    if force:
        raise ConfigError("--force is for a new run; --resume continues the existing one")
    best = str(best_checkpoint_path(checkpoint))
    if out is not None and str(out) != best:
        raise ConfigError(f"a resumed run keeps writing {best}; leave --out out")
    plan = ResumePlan.open(checkpoint)
    return plan.config(dataset, options), plan
