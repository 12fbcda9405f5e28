"""The settings of each job, as dataclasses with defaults.

Torch-free on purpose: the CLI reads choices and defaults from here to build its help without
importing torch. Each job module takes one of these and returns a result dataclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rnnlm_cli.errors import ConfigError
from rnnlm_cli.tokenizers import DEFAULT_CHARACTER_COVERAGE, KINDS

DEVICES = ("auto", "cpu", "cuda", "mps")
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
OPTIMIZERS = ("sgd", "adam", "adamw")
DEFAULT_LR = {"sgd": 20.0, "adam": 1e-3, "adamw": 1e-3}
SCHEDULES = ("plateau", "epoch", "cosine")
CONTEXTS = ("stream", "line")
EVAL_PRECISIONS = ("fp32", "bf16")
ENCODING_ERRORS = ("strict", "replace")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
SOFTMAXES = ("full", "adaptive")
DIRECTIONS = ("forward", "backward", "both")
# --softmax adaptive without --cutoffs: these, below the vocabulary size (Grave et al. 2017 used 2000, 10000 on
# WikiText-2's 33k words; more clusters follow for bigger vocabularies)
DEFAULT_CUTOFFS = (2000, 10000, 50000, 200000)
# the model's settings (ModelConfig takes them, with the vocabulary size)
ARCHITECTURE = ("cell", "emb_size", "hidden_size", "layers", "dropout", "tie_weights", "init_range",
                "init_recurrent", "dropout_input", "dropout_hidden", "dropout_output", "variational", "word_dropout",
                "softmax", "cutoffs", "direction", "forget_bias")
# settings that shape the weights and the optimizer state; a resumed run cannot change them
FIXED_ON_RESUME = ("cell", "emb_size", "hidden_size", "layers", "tie_weights", "init_range", "init_recurrent",
                   "forget_bias", "softmax", "cutoffs", "direction", "optimizer")

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
PRESET_SOURCES = {
    "small": "Zaremba et al. 2014 small: 2x200, no dropout, 13 epochs (published PTB test ppl 114.5)",
    "medium": "Zaremba et al. 2014 medium: 2x650, dropout 0.5, 39 epochs (published 82.7)",
    "large": "Zaremba et al. 2014 large: 2x1500, dropout 0.65, 55 epochs (published 78.4)",
    "small-tied": "Zaremba small with tied input/output embeddings",
    "medium-tied": "PyTorch word_language_model example, 2x650 tied, dropout 0.5, 40 epochs (published 75.96)",
    "large-tied": "PyTorch word_language_model example, 2x1500 tied, dropout 0.65, 40 epochs (published 72.30)",
}


def _choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def check_architecture(settings: dict[str, Any]) -> None:
    """Fail with a user-facing message on model settings that cannot work (shared by configs and checkpoints)."""
    _choice(settings["cell"], CELLS, "cell")
    for name in ("emb_size", "hidden_size", "layers"):
        if settings[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {settings[name]}")
    for name in ("dropout", "dropout_input", "dropout_hidden", "dropout_output", "word_dropout"):
        value = settings.get(name)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), not {value}")
    if settings["tie_weights"] and settings["emb_size"] != settings["hidden_size"]:
        raise ConfigError(
            f"--tie-weights needs --emb-size equal to --hidden-size "
            f"(got {settings['emb_size']} and {settings['hidden_size']})"
        )
    _choice(settings.get("direction", "forward"), DIRECTIONS, "direction")
    forget_bias = settings.get("forget_bias")
    if forget_bias is not None and (settings["cell"] != "lstm" or not math.isfinite(forget_bias)):
        raise ConfigError("--forget-bias sets an LSTM's forget gates (a finite number); this model's cell is "
                          f"{settings['cell']}" if settings["cell"] != "lstm" else "--forget-bias must be finite")
    softmax, cutoffs = settings.get("softmax", "full"), settings.get("cutoffs")
    _choice(softmax, SOFTMAXES, "softmax")
    if softmax == "full" and cutoffs:
        raise ConfigError("--cutoffs splits the vocabulary of --softmax adaptive; add --softmax adaptive")
    if softmax == "adaptive" and settings["tie_weights"]:
        raise ConfigError("--tie-weights shares the embedding with a full softmax's output matrix; "
                          "it does not combine with --softmax adaptive")
    if cutoffs is not None and (not cutoffs or any(not isinstance(c, int) or c < 1 for c in cutoffs)
                                or list(cutoffs) != sorted(set(cutoffs))):
        raise ConfigError(f"--cutoffs must be increasing whole numbers above 0, e.g. 2000,10000 (got {cutoffs})")


def parse_cutoffs(text: str) -> list[int]:
    """``--cutoffs 2000,10000`` as [2000, 10000]."""
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(f"--cutoffs takes whole numbers separated by commas, e.g. 2000,10000 (got {text!r})"
                          ) from None


def _threads(value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"--threads must be at least 1, not {value}")


def _device(value: str) -> None:
    if value not in DEVICES and not value.startswith("cuda:"):
        raise ConfigError(f"unknown device {value!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")


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
        _choice(self.kind, KINDS, "tokenizer kind")
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, not {self.jobs}")
        _choice(self.encoding_errors, ENCODING_ERRORS, "--encoding-errors mode")
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
class TrainConfig:
    dataset: str  # a directory written by `rnnlm tokenize`
    out: str  # best-validation checkpoint; the latest state goes beside it as <stem>.last<suffix>
    cell: str = "lstm"  # rnn_tanh | rnn_relu | lstm | gru
    layers: int = 2
    emb_size: int = 200
    hidden_size: int = 200
    dropout: float = 0.2  # default for the input, hidden and output dropouts below
    tie_weights: bool = False  # share embedding and output matrices; needs emb_size == hidden_size
    init_range: float = 0.1  # uniform init of embedding and output weights in [-r, r]
    init_recurrent: bool = False  # also the recurrent layers' weights and biases (else PyTorch's +-1/sqrt(hidden))
    dropout_input: float | None = None  # on the embeddings (None: dropout)
    dropout_hidden: float | None = None  # between recurrent layers (None: dropout)
    dropout_output: float | None = None  # on the top layer's output (None: dropout)
    variational: bool = False  # one dropout mask per sequence, shared across time steps
    word_dropout: float = 0.0  # drop whole words (rows of the embedding matrix) per batch
    softmax: str = "full"  # full | adaptive (clusters of rarer words behind a small head: big vocabularies)
    cutoffs: list[int] | None = None  # adaptive: where the frequency-ordered vocabulary is cut (None: automatic)
    forget_bias: float | None = None  # LSTM: the forget gates' bias at initialisation (None: PyTorch's random one)
    direction: str = "forward"  # forward | backward (right to left) | both (two stacks, shared embedding and softmax)
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float | None = None  # None: 20 for sgd, 0.001 for adam(w) (filled in on construction)
    weight_decay: float = 0.0  # L2 penalty (sgd, adam) or decoupled decay (adamw)
    clip: float = 0.25  # maximum global gradient norm; 0 turns clipping off
    bptt: int = 35  # time steps per truncated back-propagation window
    batch_size: int = 20  # parallel streams
    epochs: int = 40
    schedule: str = "plateau"  # plateau | epoch | cosine (see rnnlm_cli.jobs.train)
    lr_decay: float = 4.0  # plateau and epoch schedules divide the learning rate by this; 1 never
    decay_start: int = 0  # epoch schedule: epochs at the full rate before dividing every epoch
    warmup_steps: int = 0  # cosine schedule: steps of linear warm-up before the cosine decay
    patience: int = 5  # stop after this many epochs in a row without improvement; 0 never stops early
    precision: str = "auto"  # auto | fp32 | bf16; auto is bf16 on CUDA and on CPUs with AMX / AVX-512 BF16
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
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _choice(self.schedule, SCHEDULES, "schedule")
        _choice(self.precision, TRAIN_PRECISIONS, "precision")
        _device(self.device)
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
        _threads(self.threads)

    @classmethod
    def from_preset(cls, preset: str | None, **settings: Any) -> TrainConfig:
        """A preset's settings with ``settings`` (explicit options) on top."""
        if preset is None:
            return cls(**settings)
        _choice(preset, tuple(PRESETS), "preset")
        return cls(**{**PRESETS[preset], **settings, "preset": preset})

    def architecture(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ARCHITECTURE}


DYNAMIC_RULES = ("rms", "sgd")


@dataclass(frozen=True)
class CacheSettings:
    """A continuous cache (Grave et al. 2017): p = (1 - lam) p_model + lam p_cache, where p_cache spreads
    softmax(theta h_t . h_i) over the tokens that followed the last ``window`` top-layer states h_i."""

    # window: awd-lstm-lm's PTB setting (pointer.py --window 500); theta and lam: the best of rnnlm tune's grid on
    # PTB valid for the small preset's model (117.1 -> 96.0; awd-lstm-lm's PTB values, theta 1.0 and 0.1, fit
    # its 3-layer model's states)
    window: int = 500
    theta: float = 0.5  # the attention's sharpness
    lam: float = 0.15  # the cache's share

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"--cache-window must be at least 1, not {self.window}")
        if not self.theta >= 0 or not math.isfinite(self.theta):
            raise ConfigError(f"--cache-theta must be 0 or more, not {self.theta}")
        if not 0 <= self.lam <= 1:
            raise ConfigError(f"--cache-lambda must be in [0, 1], not {self.lam}")

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "theta": self.theta, "lambda": self.lam}


@dataclass(frozen=True)
class DynamicSettings:
    """Dynamic evaluation: each segment of ``segment`` tokens is scored, then used for one update of the weights.

    rms (Krause et al. 2018): w -= lr g / (RMS + eps) and w += decay * r (w0 - w), where RMS is each weight's
    root-mean-square gradient on the training text and r = RMS / mean(RMS) (at most 1 / decay).
    sgd (Mikolov's rnnlm -dynamic): w -= lr g and w += decay (w0 - w).
    """

    rule: str = "rms"
    lr: float | None = None  # None: the rule's default (DYNAMIC_LR)
    decay: float = 0.002  # the pull back toward the trained weights w0, per update
    segment: int = 20  # tokens per update
    data: str | None = None  # rms: the dataset directory whose train split gives the RMS (None: the checkpoint's)

    def __post_init__(self) -> None:
        _choice(self.rule, DYNAMIC_RULES, "--dynamic-rule")
        if self.lr is not None and not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--dynamic-lr must be 0 or more, not {self.lr}")
        if not 0 <= self.decay <= 1:
            raise ConfigError(f"--dynamic-decay must be in [0, 1], not {self.decay}")
        if self.segment < 1:
            raise ConfigError(f"--dynamic-segment must be at least 1, not {self.segment}")

    @property
    def learning_rate(self) -> float:
        return DYNAMIC_LR[self.rule] if self.lr is None else self.lr

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "lr": self.learning_rate, "decay": self.decay, "segment": self.segment}


# each rule's default step, tuned on PTB's valid text with the small preset's model (docs/benchmarks.md)
DYNAMIC_LR = {"rms": 2e-3, "sgd": 0.3}


@dataclass(frozen=True)
class NgramSettings:
    """Linear interpolation per token with an n-gram model (ARPA or KenLM binary): (1 - weight) p + weight p_ngram."""

    path: str
    # the n-gram's share: rnnlm tune's choice on PTB valid for the small preset's model and a KenLM modified-KN
    # 5-gram of PTB train (and the weight a hand mix of the two chose on valid)
    weight: float = 0.35

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 1:
            raise ConfigError(f"--ngram-weight must be in [0, 1], not {self.weight}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.path, "weight": self.weight}


@dataclass
class EvalConfig:
    checkpoint: str
    inputs: list[str] = field(default_factory=list)  # text files; "-" is standard input
    files_from: str | None = None  # a file listing more inputs, one path per line ("-": stdin)
    context: str = "stream"  # stream | line (see rnnlm_cli.jobs.evaluate)
    batch_size: int = 64  # lines per forward call in line mode; never changes the result
    exclude_oov: bool = False  # SRILM's convention: OOV tokens are neither scored nor counted
    precision: str = "fp32"  # fp32 (exact) | bf16 (faster matrix products, about 3 significant digits)
    device: str = "auto"
    encoding_errors: str = "strict"  # strict: invalid UTF-8 is an error naming the line; replace: U+FFFD
    threads: int | None = None  # CPU threads; None: by the model's size and the other processes' load
    cache: CacheSettings | None = None  # adaptations (rnnlm_cli.scoring.adapt); None: off
    dynamic: DynamicSettings | None = None
    ngram: NgramSettings | None = None

    @property
    def adapted(self) -> bool:
        return any(setting is not None for setting in (self.cache, self.dynamic, self.ngram))

    def __post_init__(self) -> None:
        _threads(self.threads)
        _choice(self.context, CONTEXTS, "context mode")
        _choice(self.encoding_errors, ENCODING_ERRORS, "--encoding-errors mode")
        _choice(self.precision, EVAL_PRECISIONS, "precision")
        _device(self.device)
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if not self.inputs and self.files_from is None:
            raise ConfigError("give at least one text file to evaluate (- for stdin), or --files-from LIST")
        if self.inputs.count("-") + (self.files_from == "-") > 1:
            raise ConfigError("standard input (-) can be read only once")


# rnnlm tune's default grids: small enough to run in minutes on a 2 x 200 PTB model, wide enough to bracket the
# settings published for PTB and WikiText-2 (awd-lstm-lm: window 500 / 3785, theta 1.0 / 0.662, lambda 0.1 / 0.128)
TUNE_CACHE_WINDOWS = (100, 500, 2000, 4000)
TUNE_CACHE_THETAS = (0.1, 0.2, 0.3, 0.5, 1.0)
TUNE_CACHE_LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.3)
TUNE_DYNAMIC_LRS = {"rms": (1e-3, 2e-3, 4e-3), "sgd": (0.1, 0.3, 1.0)}
TUNE_DYNAMIC_DECAYS = (0.002, 0.01)
TUNE_NGRAM_WEIGHTS = tuple(round(0.05 * step, 2) for step in range(1, 20))


@dataclass
class TuneConfig:
    """``rnnlm tune``: the adaptations' settings that give the lowest ppl on one validation text."""

    checkpoint: str
    text: str  # the validation text ("-": stdin)
    context: str = "stream"
    cache: bool = False
    dynamic: bool = False
    ngram: str | None = None  # the n-gram model to mix in
    cache_windows: tuple[int, ...] = TUNE_CACHE_WINDOWS
    cache_thetas: tuple[float, ...] = TUNE_CACHE_THETAS
    cache_lambdas: tuple[float, ...] = TUNE_CACHE_LAMBDAS
    dynamic_rule: str = "rms"
    dynamic_lrs: tuple[float, ...] | None = None  # None: TUNE_DYNAMIC_LRS of the rule
    dynamic_decays: tuple[float, ...] = TUNE_DYNAMIC_DECAYS
    dynamic_segment: int = 20
    dynamic_data: str | None = None
    ngram_weights: tuple[float, ...] = TUNE_NGRAM_WEIGHTS
    batch_size: int = 64
    precision: str = "fp32"
    device: str = "auto"
    encoding_errors: str = "strict"
    threads: int | None = None

    def __post_init__(self) -> None:
        _threads(self.threads)
        _choice(self.context, CONTEXTS, "context mode")
        _choice(self.precision, EVAL_PRECISIONS, "precision")
        _choice(self.encoding_errors, ENCODING_ERRORS, "--encoding-errors mode")
        _device(self.device)
        if not (self.cache or self.dynamic or self.ngram):
            raise ConfigError("nothing to tune: add --cache, --dynamic or --ngram MODEL (or several)")
        # every value of every grid must be a valid setting: checked here, before any work
        for window in self.cache_windows:
            CacheSettings(window=window)
        for theta in self.cache_thetas:
            CacheSettings(theta=theta)
        for lam in self.cache_lambdas:
            CacheSettings(lam=lam)
        for lr in self.learning_rates:
            DynamicSettings(self.dynamic_rule, lr, segment=self.dynamic_segment)
        for decay in self.dynamic_decays:
            DynamicSettings(self.dynamic_rule, decay=decay)
        for weight in self.ngram_weights:
            NgramSettings("", weight)

    @property
    def learning_rates(self) -> tuple[float, ...]:
        return self.dynamic_lrs or TUNE_DYNAMIC_LRS[self.dynamic_rule]

    def dynamic_settings(self, lr: float | None, decay: float) -> DynamicSettings:
        return DynamicSettings(self.dynamic_rule, lr, decay, self.dynamic_segment, self.dynamic_data)

    def ngram_settings(self) -> NgramSettings:
        return NgramSettings(self.ngram or "")


RESCORE_CONTEXTS = ("line", "utterance")
NBEST_FORMATS = ("kaldi", "srilm", "mikolov", "jsonl")
UNITS = ("log10", "ln")


@dataclass(frozen=True)
class RescoreWeights:
    """How a hypothesis's total is made, in the list's units (log10 or natural log; higher is better):
    total = sum of score_weights[j] x the list's score j + lm_weight x the model's log-probability
            + word_penalty x words + oov_penalty x out-of-vocabulary words + rank_weight x rank (0 for the first).
    Each weight is added as given: a negative word_penalty favours fewer words."""

    lm_weight: float = 1.0
    word_penalty: float = 0.0
    oov_penalty: float = 0.0
    rank_weight: float = 0.0
    score_weights: tuple[float, ...] | None = None  # one per score column of the list; None: 1 for each

    def __post_init__(self) -> None:
        for name in ("lm_weight", "word_penalty", "oov_penalty", "rank_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number")

    def columns(self, count: int) -> tuple[float, ...]:
        """The weight of each of ``count`` score columns."""
        if self.score_weights is None:
            return (1.0,) * count
        if len(self.score_weights) != count:
            raise ConfigError(f"--score-weight was given {len(self.score_weights)} times, and the list has {count} "
                              f"score column{'s' if count != 1 else ''}: give one per column, in order")
        return self.score_weights

    def to_dict(self, count: int) -> dict[str, Any]:
        return {"lm_weight": self.lm_weight, "word_penalty": self.word_penalty, "oov_penalty": self.oov_penalty,
                "rank_weight": self.rank_weight, "score_weights": list(self.columns(count))}


@dataclass
class RescoreConfig:
    """``rnnlm rescore``: an n-best list's hypotheses scored by the model, combined with the list's own scores."""

    checkpoint: str
    nbest: str  # a file, a directory of SRILM files, or "-" for stdin
    format: str | None = None  # None: guessed from the input
    context: str = "line"  # line: each hypothesis from a fresh state; utterance: after the previous 1-best
    units: str | None = None  # None: the format's own (rnnlm_cli.nbest.DEFAULT_UNITS)
    weights: RescoreWeights = field(default_factory=RescoreWeights)
    word_map: str | None = None  # rules rewriting the words the model reads (rnnlm_cli.nbest.WordMap)
    costs: tuple[str, ...] = ()  # files of Kaldi costs (UTTID-N cost), each a score column of a Kaldi list
    ngram: NgramSettings | None = None
    batch_size: int = 256  # prefix chains read together; never changes the result
    precision: str = "fp32"
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        _threads(self.threads)
        _device(self.device)
        _choice(self.context, RESCORE_CONTEXTS, "context")
        _choice(self.precision, EVAL_PRECISIONS, "precision")
        if self.format is not None:
            _choice(self.format, NBEST_FORMATS, "n-best format")
        if self.units is not None:
            _choice(self.units, UNITS, "units")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")


@dataclass
class SampleConfig:
    checkpoint: str
    prompts: list[str] = field(default_factory=lambda: [""])  # "" starts at the beginning of a line
    num_samples: int = 1  # per prompt
    max_tokens: int = 50  # generated tokens per sample, at most
    temperature: float = 1.0  # 0 picks the most likely token (greedy)
    top_k: int = 0  # sample among the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # sample among the fewest most likely tokens whose probabilities reach top_p (nucleus)
    greedy: bool = False  # always the most likely token: the same as temperature 0 or top_k 1
    beam_size: int = 0  # > 0: beam search returning the beam_size most probable continuations of each prompt
    seed: int | None = None  # None: a fresh one for each call, drawn by the Generator (which reports it)
    device: str = "auto"
    stop_at_eos: bool | None = None  # None: stop at the line end, except for character models
    batch_size: int = 256  # rows (samples or beams) generated together; prompts are never split across batches
    threads: int | None = None  # CPU threads; None: by the model's size and the other processes' load

    def __post_init__(self) -> None:
        _threads(self.threads)
        _device(self.device)
        if self.num_samples < 1 or self.max_tokens < 1 or self.batch_size < 1:
            raise ConfigError("--num-samples, --max-tokens and --batch-size must be at least 1")
        if self.temperature < 0:
            raise ConfigError(f"--temperature cannot be negative (got {self.temperature:g})")
        if self.top_k < 0:
            raise ConfigError(f"--top-k cannot be negative (got {self.top_k})")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1] (got {self.top_p:g})")
        if self.beam_size < 0:
            raise ConfigError(f"--beam-size cannot be negative (got {self.beam_size})")
        if self.beam_size:
            sampling = [name for name, given in (("--num-samples", self.num_samples != 1),
                                                 ("--temperature", self.temperature != 1.0),
                                                 ("--top-k", self.top_k != 0), ("--top-p", self.top_p != 1.0),
                                                 ("--greedy", self.greedy)) if given]
            if sampling:
                raise ConfigError(f"--beam-size returns the N most probable continuations; it does not sample, "
                                  f"so leave out {', '.join(sampling)}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0 or self.top_k == 1


@dataclass
class FillConfig:
    checkpoint: str
    sentences: list[str] = field(default_factory=list)  # each holds the blank exactly once
    candidates: list[str] | None = None  # None: rank every word of the vocabulary (word models only)
    top: int = 10  # fillers listed per sentence, best first
    blank: str = "___"
    batch_size: int = 1024  # fillers scored together
    precision: str = "fp32"  # fp32 (exact) | bf16 (faster, about 3 significant digits)
    device: str = "auto"
    threads: int | None = None  # CPU threads; None: by the model's size and the other processes' load

    def __post_init__(self) -> None:
        _threads(self.threads)
        _choice(self.precision, EVAL_PRECISIONS, "precision")
        _device(self.device)
        if self.top < 1 or self.batch_size < 1:
            raise ConfigError("--top and --batch-size must be at least 1")
        if not self.blank.strip():
            raise ConfigError("--blank cannot be empty or blank space")
        if self.candidates is not None:
            self.candidates = [candidate.strip() for candidate in self.candidates if candidate.strip()]
            if not self.candidates:
                raise ConfigError("--candidates is empty; give fillers separated by commas, e.g. --candidates a,b,c")
