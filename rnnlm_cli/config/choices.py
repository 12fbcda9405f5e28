"""The choices of options, each written once as a ``Literal`` (the CLI offers them as they are) and as a tuple."""

from __future__ import annotations

from typing import Literal, get_args

from rnnlm_cli.errors import ConfigError

Device = Literal["auto", "cpu", "cuda", "mps"]
Cell = Literal["rnn_tanh", "rnn_relu", "lstm", "gru"]
Softmax = Literal["full", "adaptive"]
Direction = Literal["forward", "backward", "both"]
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["plateau", "epoch", "cosine"]
TrainPrecision = Literal["auto", "fp32", "bf16"]
EvalPrecision = Literal["fp32", "bf16"]
Context = Literal["stream", "line"]
EncodingErrors = Literal["strict", "replace"]
DynamicRule = Literal["rms", "sgd"]
RescoreContext = Literal["line", "utterance"]
NbestFormat = Literal["kaldi", "srilm", "mikolov", "jsonl"]
Units = Literal["log10", "ln"]

DEVICES = get_args(Device)
CELLS = get_args(Cell)
SOFTMAXES = get_args(Softmax)
DIRECTIONS = get_args(Direction)
OPTIMIZERS = get_args(Optimizer)
SCHEDULES = get_args(Schedule)
TRAIN_PRECISIONS = get_args(TrainPrecision)
EVAL_PRECISIONS = get_args(EvalPrecision)
CONTEXTS = get_args(Context)
ENCODING_ERRORS = get_args(EncodingErrors)
DYNAMIC_RULES = get_args(DynamicRule)
RESCORE_CONTEXTS = get_args(RescoreContext)
NBEST_FORMATS = get_args(NbestFormat)
UNITS = get_args(Units)


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def check_threads(value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"--threads must be at least 1, not {value}")


def check_device(value: str) -> None:
    if value not in DEVICES and not value.startswith("cuda:"):
        raise ConfigError(f"unknown device {value!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
