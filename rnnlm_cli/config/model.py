"""The model's settings, written once: ``ModelSettings`` holds them with their defaults; ``ModelConfig`` adds the
vocabulary size and is what builds a model; ``TrainConfig`` takes them as options. No torch here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from rnnlm_cli.config.choices import CELLS, DIRECTIONS, SOFTMAXES, Cell, Direction, Softmax, check_choice
from rnnlm_cli.errors import ConfigError

# --softmax adaptive without --cutoffs: these, below the vocabulary size (Grave et al. 2017 used 2000, 10000 on
# WikiText-2's 33k words; more clusters follow for bigger vocabularies)
DEFAULT_CUTOFFS = (2000, 10000, 50000, 200000)
# adaptive softmax: cluster i (from 1) projects the hidden state to hidden_size / ADAPTIVE_DIV**i units
ADAPTIVE_DIV = 4


@dataclass(kw_only=True)
class ModelSettings:
    """What shapes a model and how it is initialised and regularised, apart from its vocabulary."""

    cell: Cell = "lstm"
    emb_size: int = 200
    hidden_size: int = 200
    layers: int = 2
    dropout: float = 0.2  # default for the three dropouts below
    tie_weights: bool = False  # share the embedding and output matrices (needs emb_size == hidden_size)
    init_range: float = 0.1  # uniform init of embedding and output weights in [-r, r]
    init_recurrent: bool = False  # also the recurrent layers' weights and biases (else PyTorch's +-1/sqrt(hidden))
    dropout_input: float | None = None  # on the embeddings (None: dropout)
    dropout_hidden: float | None = None  # between recurrent layers (None: dropout)
    dropout_output: float | None = None  # on the top layer's output (None: dropout)
    variational: bool = False  # one dropout mask per sequence, shared across time steps ("locked")
    word_dropout: float = 0.0  # drop whole words: zero random rows of the embedding matrix per batch
    softmax: Softmax = "full"  # adaptive: clusters of rarer words behind a small head (big vocabularies)
    cutoffs: list[int] | None = None  # adaptive: ids below cutoffs[0] in the head, then one cluster per range
    # (None: DEFAULT_CUTOFFS below the vocabulary size)
    direction: Direction = "forward"  # backward: right to left; both: two stacks sharing embedding and softmax
    forget_bias: float | None = None  # LSTM: the forget gates' bias at initialisation (None: PyTorch's random one)

    def architecture(self) -> dict[str, Any]:
        """The model's settings as a plain dict (``ModelConfig`` takes them with the vocabulary size)."""
        return {name: getattr(self, name) for name in ARCHITECTURE}

    def dropouts(self) -> tuple[float, float, float]:
        """(input, hidden, output) dropout probabilities."""
        pick = [self.dropout if p is None else p for p in (self.dropout_input, self.dropout_hidden,
                                                            self.dropout_output)]
        return pick[0], pick[1], pick[2]


ARCHITECTURE = tuple(f.name for f in fields(ModelSettings))
# the settings that fix the weights' shapes and starting values: a resumed run cannot change them (nor its optimizer,
# whose state it carries on)
FIXED_ON_RESUME = ("cell", "emb_size", "hidden_size", "layers", "tie_weights", "init_range", "init_recurrent",
                   "forget_bias", "softmax", "cutoffs", "direction", "optimizer")


@dataclass
class ModelConfig(ModelSettings):
    """A model's settings and its vocabulary size: what ``RNNLanguageModel`` is built from and checkpoints store."""

    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ConfigError(f"the vocabulary size must be at least 1, not {self.vocab_size}")
        if self.softmax == "adaptive" and self.cutoffs is None:
            self.cutoffs = [c for c in DEFAULT_CUTOFFS if c < self.vocab_size - 1] or [max(1, self.vocab_size // 2)]
        if self.cutoffs is not None:
            self.cutoffs = list(self.cutoffs)
        check_architecture(self.to_dict())
        if self.cutoffs and self.cutoffs[-1] >= self.vocab_size:
            raise ConfigError(f"--cutoffs must stay below the vocabulary size ({self.vocab_size}); "
                              f"got {', '.join(map(str, self.cutoffs))}")
        if self.cutoffs and self.hidden_size // ADAPTIVE_DIV ** len(self.cutoffs) < 1:
            raise ConfigError(f"--hidden-size {self.hidden_size} is too small for {len(self.cutoffs)} adaptive "
                              f"softmax clusters (cluster i projects to hidden-size / {ADAPTIVE_DIV}^i units); "
                              f"give fewer --cutoffs or a bigger model")

    def readings(self) -> list[bool]:
        """The directions the model reads text in, as "reversed?" flags: [False], [True] or [False, True]."""
        return {"forward": [False], "backward": [True], "both": [False, True]}[self.direction]

    def to_dict(self) -> dict[str, Any]:
        values = {"vocab_size": self.vocab_size, **asdict(self)}  # the vocabulary first, as checkpoints list it
        if values["forget_bias"] is None:  # checkpoints without it read as before, in any version of rnnlm
            del values["forget_bias"]
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**data)


def check_architecture(settings: dict[str, Any]) -> None:
    """Fail with a user-facing message on model settings that cannot work (shared by configs and checkpoints)."""
    check_choice(settings["cell"], CELLS, "cell")
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
    check_choice(settings.get("direction", "forward"), DIRECTIONS, "direction")
    forget_bias = settings.get("forget_bias")
    if forget_bias is not None and (settings["cell"] != "lstm" or not math.isfinite(forget_bias)):
        raise ConfigError("--forget-bias sets an LSTM's forget gates (a finite number); this model's cell is "
                          f"{settings['cell']}" if settings["cell"] != "lstm" else "--forget-bias must be finite")
    softmax, cutoffs = settings.get("softmax", "full"), settings.get("cutoffs")
    check_choice(softmax, SOFTMAXES, "softmax")
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
