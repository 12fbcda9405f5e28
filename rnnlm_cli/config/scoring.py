"""The settings of the scoring jobs (eval, tune, rescore) and of the adaptations they share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rnnlm_cli.config.choices import (
    CONTEXTS,
    DYNAMIC_RULES,
    ENCODING_ERRORS,
    EVAL_PRECISIONS,
    NBEST_FORMATS,
    RESCORE_CONTEXTS,
    UNITS,
    check_choice,
    check_device,
    check_threads,
)
from rnnlm_cli.errors import ConfigError


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
        check_choice(self.rule, DYNAMIC_RULES, "--dynamic-rule")
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
        check_threads(self.threads)
        check_choice(self.context, CONTEXTS, "context mode")
        check_choice(self.encoding_errors, ENCODING_ERRORS, "--encoding-errors mode")
        check_choice(self.precision, EVAL_PRECISIONS, "precision")
        check_device(self.device)
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
        check_threads(self.threads)
        check_choice(self.context, CONTEXTS, "context mode")
        check_choice(self.precision, EVAL_PRECISIONS, "precision")
        check_choice(self.encoding_errors, ENCODING_ERRORS, "--encoding-errors mode")
        check_device(self.device)
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
        check_threads(self.threads)
        check_device(self.device)
        check_choice(self.context, RESCORE_CONTEXTS, "context")
        check_choice(self.precision, EVAL_PRECISIONS, "precision")
        if self.format is not None:
            check_choice(self.format, NBEST_FORMATS, "n-best format")
        if self.units is not None:
            check_choice(self.units, UNITS, "units")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
