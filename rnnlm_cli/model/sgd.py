"""Plain SGD without torch.optim.

``torch.optim``'s first use imports ``torch._dynamo``, which took 1.0-1.6 s of every `rnnlm train` process on
the benchmark machine (docs/benchmarks-history.md) for an update that is one line here. Only SGD without momentum and
weight decay, the presets' optimizer, uses this; the others keep torch.optim.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class PlainSGD:
    """p <- p - lr * grad, as ``torch.optim.SGD(params, lr)`` updates (tested bit for bit against it).

    It offers what the trainer uses of an optimizer: ``param_groups`` (one group, whose ``lr`` may be set),
    ``zero_grad``, ``step``, and a ``state_dict`` in torch.optim.SGD's layout, so a run saved with either can be
    resumed with the other (a resumed run may turn weight decay on or off).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        self.params = list(params)
        self.param_groups: list[dict[str, Any]] = [{"params": self.params, "lr": lr}]

    def zero_grad(self) -> None:
        """Drop the gradients (torch.optim's default, set_to_none)."""
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        dense, grads = [], []
        for param in self.params:
            if param.grad is None:
                continue
            if param.grad.is_sparse:  # the embedding's rows that were read
                param.add_(param.grad, alpha=-lr)
            else:
                dense.append(param)
                grads.append(param.grad)
        if dense:
            torch._foreach_add_(dense, grads, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        group = {"lr": self.param_groups[0]["lr"], "momentum": 0, "dampening": 0, "weight_decay": 0,
                 "nesterov": False, "maximize": False, "params": list(range(len(self.params)))}
        return {"state": {}, "param_groups": [group]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the learning rate of a state saved by this class or by torch.optim.SGD (which keeps no
        per-parameter state without momentum; weight decay is the run's setting, not the state's)."""
        groups = state["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params) or state["state"]:
            raise ValueError("the saved optimizer state is not plain SGD's for these parameters")
        self.param_groups[0]["lr"] = groups[0]["lr"]
