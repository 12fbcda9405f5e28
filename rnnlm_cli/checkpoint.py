"""The one on-disk checkpoint format, shared by every command.

A checkpoint is one file written by ``torch.save`` holding plain data only, so it loads with
``torch.load(path, weights_only=True)`` and never unpickles code. docs/checkpoint-format.md
describes every key. This module is the only place that calls ``torch.save`` or ``torch.load``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pickle
import platform
import types
import typing
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnlm_cli import __version__
from rnnlm_cli.errors import CheckpointError, RnnlmError
from rnnlm_cli.model import ModelConfig, RNNLanguageModel
from rnnlm_cli.tokenizers import Tokenizer, tokenizer_from_dict

FORMAT = "rnnlm-checkpoint"
FORMAT_VERSION = 4
# 1 -> 2: model_config gained dropout_input, dropout_hidden, dropout_output, variational and
# word_dropout (training-only, with defaults); train gained precision.


@dataclass
class Checkpoint:
    """The contents of one checkpoint file."""

    model_config: ModelConfig
    model_state: dict[str, torch.Tensor]  # the raw module's state_dict()
    tokenizer: dict[str, Any]  # Tokenizer.to_dict()
    train: dict[str, Any] = field(default_factory=dict)  # config, progress, history, resume state
    data: dict[str, Any] = field(default_factory=dict)  # fingerprints of the training corpora
    versions: dict[str, str] = field(default_factory=dict)

    def build_tokenizer(self) -> Tokenizer:
        return tokenizer_from_dict(self.tokenizer)

    def build_model(self, device: torch.device | str = "cpu") -> RNNLanguageModel:
        """The model with its weights, in eval mode; fails clearly when weights and config disagree.

        The model's shape is first built on the meta device (no memory) and compared entry by entry with the
        stored tensors, so a config that does not match its weights is refused before anything is allocated.
        """
        with torch.device("meta"):
            template = RNNLanguageModel(self.model_config).state_dict()
        for name, expected in template.items():
            stored = self.model_state.get(name)
            if stored is None:
                raise CheckpointError(f"the checkpoint's weights lack model[{name!r}], which its model config needs")
            if tuple(stored.shape) != tuple(expected.shape):
                raise CheckpointError(f"the checkpoint's model[{name!r}] has shape {tuple(stored.shape)}, and its "
                                      f"model config needs {tuple(expected.shape)}")
        extra = sorted(set(self.model_state) - set(template))
        if extra:
            raise CheckpointError(f"the checkpoint's weights hold model[{extra[0]!r}], which its model config has no "
                                  f"place for")
        model = RNNLanguageModel(self.model_config)
        model.load_state_dict(self.model_state, strict=True)
        return model.to(device).eval()

    @property
    def resumable(self) -> bool:
        return bool(self.train.get("state"))


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> None:
    """Write atomically: a temporary file in the same folder, flushed, fsynced, then renamed."""
    path = Path(path)
    payload = _on_cpu({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": checkpoint.model_config.to_dict(),
        "model": checkpoint.model_state,
        "tokenizer": checkpoint.tokenizer,
        "train": checkpoint.train,
        "data": checkpoint.data,
        "versions": checkpoint.versions or current_versions(),
    }, {})
    payload["weights_sha256"] = weights_digest(payload["model"])
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every weight in name order: its name, dtype, shape and values (in row-major order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _on_cpu(value: Any, seen: dict[tuple[int, tuple[int, ...]], torch.Tensor]) -> Any:
    """``value`` with every tensor on the CPU, so that a checkpoint written on any device loads on any other.

    Tensors that share memory (tied weights) stay one tensor in the file.
    """
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu":
            return value
        key = (value.data_ptr(), tuple(value.shape))
        if key not in seen:
            seen[key] = value.detach().cpu()
        return seen[key]
    if isinstance(value, dict):
        return {key: _on_cpu(item, seen) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item, seen) for item in value)
    return value


def _remove_abandoned_temporaries(path: Path) -> None:
    """Delete the temporary files that writers killed mid-write (kill -9, a power cut) left beside ``path``."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_versions() -> dict[str, str]:
    return {"rnnlm": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def epoch_label(record: dict[str, Any], epochs: int | None = None) -> str:
    """A validation record's epoch: "7" (or "7/13" given ``epochs``) at the epoch's end, "7 (45%)" for a
    validation inside it (--valid-every, a --max-time stop), "7 (partial)" for records older than the share."""
    label = f"{record['epoch']}" if epochs is None else f"{record['epoch']}/{epochs}"
    if record.get("complete", True):
        return label
    fraction = record.get("epoch_fraction")
    return f"{label} ({'partial' if fraction is None else f'{int(100 * fraction)}%'})"  # never "100%" early


def epoch_position(record: dict[str, Any]) -> float:
    """Epochs trained at a validation, counting the share of an epoch cut short: 6.45 inside epoch 7."""
    if record.get("complete", True) or record.get("epoch_fraction") is None:
        return float(record["epoch"])
    return record["epoch"] - 1 + record["epoch_fraction"]


def load_checkpoint(path: str | os.PathLike[str], map_location: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; every failure becomes one CheckpointError line."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(path):
        # every checkpoint is a torch zip archive; anything else (a bare pickle too) is refused unread
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, or not written by rnnlm)")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than plain data and tensors "
            "(it may try to run code); rnnlm only reads its own checkpoint format"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rnnlm checkpoint (no format marker {FORMAT!r})")
    _check_entries(raw, path)
    raw = _upgrade(raw, path)
    stored_digest = raw.get("weights_sha256")  # version 4 files from rnnlm 0.1.0 on; older ones are not checked
    if stored_digest is not None and stored_digest != weights_digest(raw["model"]):
        raise CheckpointError(f"{path}: its weights do not match the checksum written with them (the file is "
                              f"damaged)")
    try:
        return Checkpoint(
            model_config=ModelConfig.from_dict(raw["model_config"]),
            model_state=raw["model"],
            tokenizer=raw["tokenizer"],
            train=raw.get("train") or {},
            data=raw.get("data") or {},
            versions=raw.get("versions") or {},
        )
    except KeyError as error:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {error} entry)") from None
    except RnnlmError as error:
        raise CheckpointError(f"{path}: bad model config: {error}") from None


# each model setting's type, as ModelConfig declares it: what a file's model_config entries are judged by
_SETTING_TYPES = typing.get_type_hints(ModelConfig)
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _of_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the declared type ``hint`` (bool is not taken for a number; a choice, a Literal, need
    only be a string here: check_architecture names the choices)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_of_type(value, arg) for arg in args)
    if origin is typing.Literal or hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_of_type(item, args[0]) for item in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    numbers = (int, float) if hint is float else (int,) if hint is int else ()
    return isinstance(value, numbers) and not isinstance(value, bool)


def _check_entries(raw: dict[str, Any], path: Path) -> None:
    """Judge a file before anything is built from it: every entry of the expected kind, the model's settings of the
    right types, and its declared sizes those of the stored tensors (so that a file cannot make rnnlm build a
    model bigger than the weights it holds)."""
    for name in ("model_config", "model", "tokenizer"):
        if name not in raw:
            raise CheckpointError(f"{path}: incomplete checkpoint (no {name!r} entry)")
    for name in ("model_config", "tokenizer", "train", "data", "versions"):
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise CheckpointError(f"{path}: its {name!r} entry is a {type(raw[name]).__name__}, not a table")
    state = raw["model"]
    if not isinstance(state, dict) or not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                              for key, value in state.items()):
        raise CheckpointError(f"{path}: its 'model' entry is not a table of named tensors")
    config = raw["model_config"]
    for name, value in config.items():
        if name in _SETTING_TYPES and not _of_type(value, _SETTING_TYPES[name]):
            raise CheckpointError(f"{path}: model_config[{name!r}] is {value!r}, not a valid setting")
    if config.get("cell", "lstm") not in _GATES:
        raise CheckpointError(f"{path}: model_config['cell'] is {config.get('cell')!r}, not one of "
                              f"{', '.join(_GATES)}")
    sizes = {name: config.get(name) for name in ("vocab_size", "emb_size", "hidden_size", "layers")}
    embedding = state.get("embedding.weight")
    if embedding is None or embedding.dim() != 2:
        raise CheckpointError(f"{path}: its weights have no model['embedding.weight'] matrix")
    if tuple(embedding.shape) != (sizes["vocab_size"], sizes["emb_size"]):
        raise CheckpointError(f"{path}: model_config says vocab_size {sizes['vocab_size']} and emb_size "
                              f"{sizes['emb_size']}, and model['embedding.weight'] is {tuple(embedding.shape)}")
    stored_layers = sum(1 for key in state if key.startswith("rnn.weight_ih_l") and key[15:].isdigit())
    if sizes["layers"] != stored_layers:
        raise CheckpointError(f"{path}: model_config says {sizes['layers']} layers, and its weights hold "
                              f"{stored_layers}")
    recurrent = state.get("rnn.weight_hh_l0")
    gates = _GATES[config.get("cell", "lstm")]
    if recurrent is None or tuple(recurrent.shape) != (gates * sizes["hidden_size"], sizes["hidden_size"]):
        raise CheckpointError(f"{path}: model_config says hidden_size {sizes['hidden_size']}, and "
                              f"model['rnn.weight_hh_l0'] is "
                              f"{None if recurrent is None else tuple(recurrent.shape)}")


def _upgrade(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bring an older format version up to FORMAT_VERSION; the one place that knows old layouts."""
    version = raw.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: unknown checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this rnnlm reads ({FORMAT_VERSION}); "
            "upgrade rnnlm"
        )
    if version == 1:  # the new model settings take their defaults, which are version 1's behaviour
        raw = {**raw, "format_version": 2}
    if raw["format_version"] == 2:  # trained in one process
        train = raw.get("train") or {}
        raw = {**raw, "format_version": 3, "train": {**train, "processes": 1} if train else train}
    if raw["format_version"] == 3:  # version 4 only added the optional model_config entry forget_bias
        raw = {**raw, "format_version": 4}
    return raw


def load_for_inference(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[RNNLanguageModel, Tokenizer, Checkpoint]:
    """Model (eval mode, on ``device``), tokenizer and contents of a checkpoint, checked against each other."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    try:
        tokenizer = checkpoint.build_tokenizer()
    except RnnlmError as error:
        raise CheckpointError(f"{path}: bad tokenizer: {error}") from None
    if tokenizer.vocab_size != checkpoint.model_config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
            f"{checkpoint.model_config.vocab_size}"
        )
    try:
        model = checkpoint.build_model(device)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return model, tokenizer, checkpoint
