"""The training step's parts: the forward pass as a module, the optimizer with clipping, the learning-rate schedule.

Learning-rate schedules (``LearningRate``):

- ``plateau``: divide the rate by ``lr_decay`` after an epoch that did not improve validation;
- ``epoch`` (Zaremba et al.): full rate for ``decay_start`` epochs, then divided by ``lr_decay`` every epoch;
- ``cosine``: linear warm-up over ``warmup_steps``, then a cosine from the full rate down to 0 at the
  last step (the usual choice with Adam).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rnnlm_cli import distributed
from rnnlm_cli.config import TrainConfig
from rnnlm_cli.model import Hidden, RNNLanguageModel
from rnnlm_cli.model.sgd import PlainSGD


class LearningRate:
    """The rate ``config.schedule`` sets: at an epoch's start, at each step, and after an epoch without progress.
    Each method returns the new rate, or the one it was given where the schedule does not act there."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.total_steps = steps_per_epoch * config.epochs

    def epoch_start(self, epoch: int, lr: float) -> float:
        """``epoch`` counts the epochs completed before it."""
        config = self.config
        if config.schedule != "epoch":
            return lr
        return config.lr / config.lr_decay ** max(0, epoch + 1 - config.decay_start)

    def step(self, step: int, lr: float) -> float:
        """Before optimizer step ``step + 1``. Cosine: linear warm-up to ``config.lr`` over ``warmup_steps``, then
        a half cosine down to 0 at the last step."""
        config = self.config
        if config.schedule != "cosine":
            return lr
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        span = max(self.total_steps - config.warmup_steps, 1)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(step - config.warmup_steps, span) / span))

    def bad_epoch(self, lr: float) -> float:
        config = self.config
        return lr / config.lr_decay if config.schedule == "plateau" and config.lr_decay > 1 else lr


class Optimization:
    """The optimizer, with the gradient clipping and the learning rate applied at each step.

    For SGD without weight decay, clipping the gradients by a factor c is the same update as a step with the
    learning rate times c; that skips a read and a write of every gradient (measured in docs/benchmarks-history.md), and
    lets the embedding's gradient stay sparse. Other optimizers get their gradients clipped in place.
    """

    def __init__(self, config: TrainConfig, model: RNNLanguageModel, world: distributed.World,
                 device: torch.device) -> None:
        self.config = config
        self.plain_sgd = plain_sgd(config)
        self.optimizer = make_optimizer(config, model)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        model.sparse_embedding_gradient = sparse_embedding_gradient(config, model, world, device)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def clip(self) -> tuple[float, float | None]:
        """The global gradient norm, clipped to --clip; and for plain SGD the clipping factor instead."""
        limit = self.config.clip if self.config.clip > 0 else math.inf
        if not self.plain_sgd:
            return float(torch.nn.utils.clip_grad_norm_(self.parameters, limit)), None
        norm = gradient_norm(self.parameters)
        return norm, min(1.0, limit / (norm + 1e-6))  # clip_grad_norm_'s own factor

    def apply(self, lr: float, scale: float | None) -> None:
        """The update at rate ``lr``, times the clipping factor ``scale`` where ``clip`` gave one."""
        if scale is None:
            self.optimizer.step()
            return
        self.set_lr(lr * scale)
        self.optimizer.step()
        self.set_lr(lr)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, saved: dict[str, Any], lr: float) -> None:
        self.optimizer.load_state_dict(saved)
        for group in self.optimizer.param_groups:  # torch.optim's groups come back with the saved settings
            group["weight_decay"] = self.config.weight_decay  # an explicit --weight-decay on resume applies
        self.set_lr(lr)


class LossStep(nn.Module):
    """One training forward pass as a module, so that DistributedDataParallel can wrap it: the mean loss over
    the directions trained and each direction's new hidden state. The checkpoint keeps the plain model's weights."""

    def __init__(self, model: RNNLanguageModel, reversed_directions: list[bool]) -> None:
        super().__init__()
        self.model = model
        self.reversed = reversed_directions

    def forward(self, windows: list[list[Tensor]], hiddens: list[Hidden | None]) -> tuple[Tensor, list[Hidden]]:
        losses, states = [], []
        for (inputs, targets), hidden, backward in zip(windows, hiddens, self.reversed):
            features, state = self.model.features(inputs, hidden, backward=backward)  # (B, T, H)
            losses.append(self.model.loss(features.reshape(-1, features.shape[-1]), targets.reshape(-1)))
            states.append(state)
        return (losses[0] if len(losses) == 1 else torch.stack(losses).mean()), states


def gradient_norm(parameters: list[nn.Parameter]) -> float:
    """The global L2 norm of the parameters' gradients. A sparse gradient (the embedding's, where rows read
    several times appear several times) is coalesced in place first, so that it is also ready for the step."""
    grads = []
    for parameter in parameters:
        if parameter.grad is not None and parameter.grad.is_sparse:
            parameter.grad = parameter.grad.coalesce()
            grads.append(parameter.grad.values())
        elif parameter.grad is not None:
            grads.append(parameter.grad)
    return float(torch.nn.utils.get_total_norm(grads))


def sparse_embedding_gradient(config: TrainConfig, model: RNNLanguageModel, world: distributed.World,
                              device: torch.device) -> bool:
    """Whether the embedding's gradient can be sparse: where plain SGD applies it (the step with the clipping
    factor folded in, which adds just the rows read) and nothing else gives that matrix a dense gradient (tied
    output weights, word dropout). One process on a CPU only: DistributedDataParallel and GPUs keep the dense
    gradient this is tested against. A 2x200 step: the dense gradient's zero-filled 10,000 x 200 matrix, its
    norm and its update cost about 5% of the step (docs/benchmarks-history.md)."""
    model_config = model.config
    return (plain_sgd(config) and not model_config.tie_weights and model_config.word_dropout == 0
            and not world.active and device.type == "cpu")


def plain_sgd(config: TrainConfig) -> bool:
    """SGD without weight decay: its step is the learning rate times the gradient, so the clipping factor can be
    folded into the rate and the embedding's gradient can be sparse."""
    return config.optimizer == "sgd" and not config.weight_decay


def make_optimizer(config: TrainConfig, model: RNNLanguageModel) -> torch.optim.Optimizer | PlainSGD:
    if plain_sgd(config):
        return PlainSGD(model.parameters(), lr=config.lr)  # torch.optim's update, without its start-up cost
    optimizer_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    return optimizer_class[config.optimizer](model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
