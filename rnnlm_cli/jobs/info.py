"""The info job: what a checkpoint holds (its model, tokenizer, training history and data), for `rnnlm info`."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from rnnlm_cli.checkpoint import FORMAT_VERSION, load_for_inference
from rnnlm_cli.config import TrainConfig
from rnnlm_cli.errors import RnnlmError


@dataclass
class CheckpointInfo:
    path: str
    format_version: int
    model_config: dict[str, Any]
    parameters: int
    tokenizer_kind: str
    vocab_size: int
    lowercase: bool
    epochs_trained: int
    steps: int
    processes: int  # data-parallel processes that trained it
    best_valid_ppl: float | None
    best_epoch: int | None
    resumable: bool
    train_config: dict[str, Any]
    history: list[dict[str, Any]]
    data: dict[str, Any]
    versions: dict[str, str]
    gradients: dict[str, list] | None = None  # --log-gradients: "step" and "norm" of every step
    # training settings that differ from their preset's value (or the default without a preset): the options given
    overrides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def stopped_within_epoch(self) -> float | None:
        """The share of epoch ``epochs_trained + 1`` trained when the run stopped inside it (--max-time, Ctrl-C)."""
        last = self.history[-1] if self.history else None
        if last is None or last.get("complete", True) or last["epoch"] != self.epochs_trained + 1:
            return None
        return last.get("epoch_fraction")

    @property
    def best_record(self) -> dict[str, Any] | None:
        """The validation record that gave the best model."""
        scored = [record for record in self.history if math.isfinite(record.get("valid_loss", math.inf))]
        return min(scored, key=lambda record: record["valid_loss"]) if scored else None


def checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """What ``rnnlm info`` shows: the model, its tokenizer, its training and its data."""
    model, tokenizer, checkpoint = load_for_inference(path)
    train = checkpoint.train
    best_loss = train.get("best_valid_loss")
    return CheckpointInfo(
        path=str(path),
        format_version=FORMAT_VERSION,
        model_config=checkpoint.model_config.to_dict(),
        parameters=model.parameter_count(),
        tokenizer_kind=tokenizer.kind,
        vocab_size=tokenizer.vocab_size,
        lowercase=tokenizer.lowercase,
        epochs_trained=int(train.get("epoch", 0)),
        steps=int(train.get("step", 0)),
        processes=int(train.get("processes", 1)),
        best_valid_ppl=_exp(best_loss),
        best_epoch=train.get("best_epoch"),
        resumable=checkpoint.resumable,
        train_config=dict(train.get("config") or {}),
        history=list(train.get("history") or []),
        data=checkpoint.data,
        versions=checkpoint.versions,
        gradients={key: values.tolist() for key, values in train["gradients"].items()} if "gradients" in train
        else None,
        overrides=_overrides(dict(train.get("config") or {})),
    )


def _overrides(settings: dict[str, Any]) -> list[str]:
    """The settings of a run that its preset (or, without one, the defaults) would have set otherwise."""
    if not settings:
        return []
    preset = settings.get("preset")
    try:
        plain = TrainConfig.from_preset(preset, dataset="", out="")
        # without --lr, the learning rate is the chosen optimizer's default
        chosen = TrainConfig.from_preset(preset, dataset="", out="",
                                         optimizer=settings.get("optimizer", plain.optimizer))
    except (RnnlmError, TypeError):  # a preset or setting this version no longer knows
        return []
    baseline = {**asdict(plain), "lr": chosen.lr}
    return [name for name, value in settings.items()
            if name in baseline and name not in ("dataset", "out", "preset") and value != baseline[name]]


def _exp(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 700))
