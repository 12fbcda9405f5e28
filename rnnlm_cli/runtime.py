"""Where and how the tensors run: device choice and seeding."""

from __future__ import annotations

import random

import torch

from rnnlm_cli.config import DEVICES
from rnnlm_cli.errors import ConfigError, RnnlmError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when one is present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RnnlmError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def seed_everything(seed: int) -> None:
    """Fix every random number generator the toolkit uses (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA generators too
