"""The tokenize and train jobs' settings, and the published training recipes (presets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rnnlm_cli.config.choices import (
    ENCODING_ERRORS,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_PRECISIONS,
    Optimizer,
    Schedule,
    TrainPrecision,
    check_choice,
    check_device,
    check_threads,
)
from rnnlm_cli.config.model import ModelSettings, check_architecture
from rnnlm_cli.errors import ConfigError
from rnnlm_cli.tokenizers import DEFAULT_CHARACTER_COVERAGE, KINDS

DEFAULT_LR = {"sgd": 20.0, "adam": 1e-3, "adamw": 1e-3}

# Published recipes for word-level PTB. Zaremba et al. (2014) sum the loss over the bptt steps and
# use lr 1 with clip 5 (10 for large); rnnlm averages the loss per token, so the same updates are
# lr = bptt and clip = 5 / bptt. Their lr is divided by lr_decay every epoch after decay_start: 2 for
# small, 1.2 for medium (the paper: "after 6 epochs we decrease it by 1.2 in every epoch"; TensorFlow's
# ptb_word_lm, a reimplementation, uses 1.25), 1.15 for large.
# They draw every parameter, the LSTM's weights and biases included, from [-init_range, init_range].
# The *-tied medium and large recipes are the PyTorch word_language_model example's (--tied).
_ZAREMBA = {"cell": "lstm", "layers": 2, "batch_size": 20, "optimizer": "sgd", "schedule": "epoch", "patience": 0,
            "init_recurrent": True}
_PYTORCH_EXAMPLE = {"cell": "lstm", "layers": 2, "batch_size": 20, "bptt": 35, "optimizer": "sgd", "lr": 20.0,
                    "clip": 0.25, "epochs": 40, "schedule": "plateau", "lr_decay": 4.0, "patience": 0,
                    "init_range": 0.1, "tie_weights": True}
PRESETS: dict[str, dict[str, Any]] = {
    "small": {**_ZAREMBA, "emb_size": 200, "hidden_size": 200, "dropout": 0.0, "init_range": 0.1, "bptt": 20,
              "lr": 20.0, "clip": 0.25, "epochs": 13, "decay_start": 4, "lr_decay": 2.0},
    "medium": {**_ZAREMBA, "emb_size": 650, "hidden_size": 650, "dropout": 0.5, "init_range": 0.05, "bptt": 35,
               "lr": 35.0, "clip": 5 / 35, "epochs": 39, "decay_start": 6, "lr_decay": 1.2},
    "large": {**_ZAREMBA, "emb_size": 1500, "hidden_size": 1500, "dropout": 0.65, "init_range": 0.04, "bptt": 35,
              "lr": 35.0, "clip": 10 / 35, "epochs": 55, "decay_start": 14, "lr_decay": 1.15},
    "medium-tied": {**_PYTORCH_EXAMPLE, "emb_size": 650, "hidden_size": 650, "dropout": 0.5},
    "large-tied": {**_PYTORCH_EXAMPLE, "emb_size": 1500, "hidden_size": 1500, "dropout": 0.65},
}
PRESETS["small-tied"] = {**PRESETS["small"], "tie_weights": True}
# rnnlm's fast recipe for the small model (docs/benchmarks.md, "Time to quality on PTB"): tied embeddings, windows of
# 35 steps (lr and clip scaled as for medium), and the rate halved every epoch after the 2nd of 4
PRESETS["small-fast"] = {**PRESETS["small-tied"], "bptt": 35, "lr": 35.0, "clip": 5 / 35, "epochs": 4,
                         "decay_start": 2, "lr_decay": 2.0}
# and for the medium model: tied, 18 epochs instead of 39, the rate divided by 1.4 (not 1.2) each epoch after the 6th
PRESETS["medium-fast"] = {**PRESETS["medium"], "tie_weights": True, "epochs": 18, "lr_decay": 1.4}
PRESET_SOURCES = {
    "small": "Zaremba et al. 2014 small: 2x200, no dropout, 13 epochs (published PTB test ppl 114.5)",
    "medium": "Zaremba et al. 2014 medium: 2x650, dropout 0.5, 39 epochs (published 82.7)",
    "large": "Zaremba et al. 2014 large: 2x1500, dropout 0.65, 55 epochs (published 78.4)",
    "small-tied": "Zaremba small with tied input/output embeddings",
    "small-fast": "rnnlm's fast small recipe: small tied, bptt 35, 4 epochs, lr halved every epoch after the 2nd",
    "medium-fast": "rnnlm's fast medium recipe: medium tied, 18 epochs, lr divided by 1.4 each epoch after the 6th",
    "medium-tied": "PyTorch word_language_model example, 2x650 tied, dropout 0.5, 40 epochs (published 75.96)",
    "large-tied": "PyTorch word_language_model example, 2x1500 tied, dropout 0.65, 40 epochs (published 72.30)",
}


@dataclass
class TokenizeConfig:
    train: str  # the only text the vocabulary (or sentencepiece model) is built from; "-" is stdin
    out: str  # dataset directory to write
    valid: str | None = None
    test: str | None = None
    kind: str = "word"  # word | char | bpe | unigram
    vocab_size: int | None = None  # None: every word/char seen min_freq times; 8000 for sentencepiece
    min_freq: int = 1  # word and char only: rarer units become <unk>
    lowercase: bool = False
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE  # bpe/unigram: share of characters kept whole
    force: bool = False  # replace a dataset already in ``out`` (only once the new one is complete)
    encoding_errors: str = "strict"  # strict: invalid UTF-8 is an error naming the line; replace: U+FFFD
    jobs: int | None = None  # processes that encode text (None: one per CPU core, at most 8)

    def __post_init__(self) -> None:
        check_choice(self.kind, KINDS, "tokenizer kind")
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, not {self.jobs}")
        check_choice(self.encoding_errors, ENCODING_ERRORS, "--encoding-errors mode")
        if not 0 < self.character_coverage <= 1:
            raise ConfigError("--character-coverage must be in (0, 1]")
        paths = [p for p in (self.train, self.valid, self.test) if p is not None]
        if paths.count("-") > 1:
            raise ConfigError("standard input (-) can feed only one of TRAIN, --valid and --test")


def save_interval(text: str) -> tuple[int | None, float | None]:
    """``--save-every``: "500" is every 500 steps, "10m" every 10 minutes, as (steps, seconds)."""
    value = text.strip().lower()
    try:
        if value.endswith(("m", "min")):
            minutes = float(value.removesuffix("min").removesuffix("m"))
            if minutes > 0:
                return None, minutes * 60
        elif int(value) >= 1:
            return int(value), None
    except ValueError:
        pass
    raise ConfigError(f"--save-every takes a number of steps (500) or minutes (10m), not {text!r}")


@dataclass
class TrainConfig(ModelSettings):
    """The train job's settings: the model's (``ModelSettings``), then the training's."""

    dataset: str  # a directory written by `rnnlm tokenize`
    out: str  # best-validation checkpoint; the latest state goes beside it as <stem>.last<suffix>
    optimizer: Optimizer = "sgd"
    lr: float | None = None  # None: 20 for sgd, 0.001 for adam(w) (filled in on construction)
    weight_decay: float = 0.0  # L2 penalty (sgd, adam) or decoupled decay (adamw)
    clip: float = 0.25  # maximum global gradient norm; 0 turns clipping off
    bptt: int = 35  # time steps per truncated back-propagation window
    batch_size: int = 20  # parallel streams
    epochs: int = 40
    schedule: Schedule = "plateau"  # see rnnlm_cli.jobs.train.step
    lr_decay: float = 4.0  # plateau and epoch schedules divide the learning rate by this; 1 never
    decay_start: int = 0  # epoch schedule: epochs at the full rate before dividing every epoch
    warmup_steps: int = 0  # cosine schedule: steps of linear warm-up before the cosine decay
    patience: int = 5  # stop after this many epochs in a row without improvement; 0 never stops early
    precision: TrainPrecision = "auto"  # auto is bf16 on CUDA and on CPUs with AMX / AVX-512 BF16
    seed: int = 1111
    device: str = "auto"  # auto (CUDA, then MPS, then the CPU) | cpu | cuda | cuda:N | mps
    max_time: float | None = None  # seconds from the command's start (train()'s `started`), last validation included
    save_every: str | None = None  # also save the resumable state every N steps ("500") or minutes ("10m")
    valid_every: int = 0  # also validate after steps N, 2N, ... of each epoch; 0: only at each epoch's end
    valid_fraction: float = 0.05  # of training lines held out when the dataset has no valid split
    preset: str | None = None  # the recipe the settings started from (see PRESETS)
    force: bool = False  # a new run may replace an existing checkpoint at ``out``
    log_gradients: bool = False  # record every step's gradient norm and, per validation, a hidden-state probe
    threads: int | None = None  # CPU threads; None: by the model's size and the other processes' load

    def __post_init__(self) -> None:
        check_architecture(self.architecture())
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        check_choice(self.schedule, SCHEDULES, "schedule")
        check_choice(self.precision, TRAIN_PRECISIONS, "precision")
        check_device(self.device)
        for name in ("bptt", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
        for name in ("clip", "patience", "weight_decay", "decay_start", "warmup_steps", "valid_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} cannot be negative")
        if self.lr_decay < 1:
            raise ConfigError("--lr-decay divides the learning rate; it must be at least 1")
        if self.max_time is not None and self.max_time <= 0:
            raise ConfigError("--max-time must be positive")
        if self.save_every is not None:
            save_interval(self.save_every)
        if not 0 < self.valid_fraction < 1:
            raise ConfigError("valid_fraction must be between 0 and 1")
        check_threads(self.threads)

    @classmethod
    def from_preset(cls, preset: str | None, **settings: Any) -> TrainConfig:
        """A preset's settings with ``settings`` (explicit options) on top."""
        if preset is None:
            return cls(**settings)
        check_choice(preset, tuple(PRESETS), "preset")
        return cls(**{**PRESETS[preset], **settings, "preset": preset})

