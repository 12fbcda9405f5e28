"""The one set-up of a checkpoint for inference, shared by eval, tune, rescore, sample and fill."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rnnlm_cli.checkpoint import Checkpoint, load_for_inference
from rnnlm_cli.model import RNNLanguageModel
from rnnlm_cli.runtime import configure_threads, keep_freed_memory, resolve_device
from rnnlm_cli.tokenizers import Tokenizer


@dataclass
class LoadedModel:
    model: RNNLanguageModel  # in eval mode, on ``device``
    tokenizer: Tokenizer
    checkpoint: Checkpoint
    device: torch.device
    threads: int  # CPU threads chosen for its matrix work


def load_model(path: str | os.PathLike[str], device: str = "auto", threads: int | None = None) -> LoadedModel:
    """Pick the device, load and check the checkpoint's model and tokenizer, and choose the CPU threads for the
    model's size (``threads`` fixes them; see ``runtime.configure_threads``)."""
    chosen = resolve_device(device)
    keep_freed_memory()
    model, tokenizer, checkpoint = load_for_inference(path, chosen)
    count = configure_threads(threads, model.multiply_adds_per_token())
    return LoadedModel(model, tokenizer, checkpoint, chosen, count)
