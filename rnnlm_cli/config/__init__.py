"""The settings of each job, as dataclasses with defaults; the choices of options; the presets.

Torch-free on purpose: the CLI reads choices and defaults from here to build its help without importing torch.
Each job takes one of these and returns a result dataclass. ``model`` holds the model's settings (written once),
``choices`` every option's choices, ``train`` the tokenize and train settings and the presets, ``scoring`` those of
eval, tune and rescore, ``generation`` those of sample and fill. Everything is also importable from here.
"""
# ruff: noqa: F401 - this module gathers the package's names

from rnnlm_cli.config.choices import (
    CELLS,
    CONTEXTS,
    DEVICES,
    DIRECTIONS,
    DYNAMIC_RULES,
    ENCODING_ERRORS,
    EVAL_PRECISIONS,
    NBEST_FORMATS,
    OPTIMIZERS,
    RESCORE_CONTEXTS,
    SCHEDULES,
    SOFTMAXES,
    TRAIN_PRECISIONS,
    UNITS,
    Cell,
    Context,
    Device,
    Direction,
    DynamicRule,
    EncodingErrors,
    EvalPrecision,
    NbestFormat,
    Optimizer,
    RescoreContext,
    Schedule,
    Softmax,
    TrainPrecision,
    Units,
)
from rnnlm_cli.config.generation import FillConfig, SampleConfig
from rnnlm_cli.config.model import (
    ADAPTIVE_DIV,
    ARCHITECTURE,
    DEFAULT_CUTOFFS,
    FIXED_ON_RESUME,
    ModelConfig,
    ModelSettings,
    check_architecture,
    parse_cutoffs,
)
from rnnlm_cli.config.scoring import (
    DYNAMIC_LR,
    TUNE_CACHE_LAMBDAS,
    TUNE_CACHE_THETAS,
    TUNE_CACHE_WINDOWS,
    TUNE_DYNAMIC_DECAYS,
    TUNE_DYNAMIC_LRS,
    TUNE_NGRAM_WEIGHTS,
    CacheSettings,
    DynamicSettings,
    EvalConfig,
    NgramSettings,
    RescoreConfig,
    RescoreWeights,
    TuneConfig,
)
from rnnlm_cli.config.train import DEFAULT_LR, PRESET_SOURCES, PRESETS, TokenizeConfig, TrainConfig, save_interval
