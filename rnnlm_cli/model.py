"""The RNN language model: Embedding -> recurrent layers -> Affine -> Softmax.

Knows nothing of files, tokenizers or the CLI. ``ModelConfig`` is the only way to build a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm_cli.config import check_architecture
from rnnlm_cli.errors import ConfigError

# LSTM state is (h, c); the other cells carry h alone. Each is (layers, batch, hidden_size).
Hidden = Union[Tensor, tuple[Tensor, Tensor]]


@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"  # rnn_tanh | rnn_relu | lstm | gru
    emb_size: int = 200
    hidden_size: int = 200
    layers: int = 2
    dropout: float = 0.2  # on embeddings, between layers and on the top layer's output
    tie_weights: bool = False  # share the embedding and output matrices (needs emb_size == hidden_size)
    init_range: float = 0.1  # uniform init of embedding and output weights in [-r, r]

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ConfigError(f"the vocabulary size must be at least 1, not {self.vocab_size}")
        check_architecture(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**data)


class RNNLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.emb_size)
        self.dropout = nn.Dropout(config.dropout)
        between_layers = config.dropout if config.layers > 1 else 0.0
        if config.cell in ("rnn_tanh", "rnn_relu"):
            self.rnn: nn.RNNBase = nn.RNN(
                config.emb_size,
                config.hidden_size,
                config.layers,
                nonlinearity=config.cell.removeprefix("rnn_"),
                dropout=between_layers,
                batch_first=True,
            )
        else:
            cell_class = nn.LSTM if config.cell == "lstm" else nn.GRU
            self.rnn = cell_class(
                config.emb_size, config.hidden_size, config.layers, dropout=between_layers, batch_first=True
            )
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r = self.config.init_range
        nn.init.uniform_(self.embedding.weight, -r, r)
        nn.init.zeros_(self.decoder.bias)
        if not self.config.tie_weights:
            nn.init.uniform_(self.decoder.weight, -r, r)

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        shape = (self.config.layers, batch_size, self.config.hidden_size)
        zeros = torch.zeros(shape, device=device or self.decoder.weight.device)
        return (zeros, zeros.clone()) if self.config.cell == "lstm" else zeros

    def features(self, ids: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """Top-layer outputs before the output layer, and the new hidden state."""
        embedded = self.dropout(self.embedding(ids))  # (B, T, E)
        output, hidden = self.rnn(embedded, hidden)  # (B, T, H)
        return self.dropout(output), hidden

    def forward(self, ids: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """Logits for the next token at every position, and the new hidden state."""
        output, hidden = self.features(ids, hidden)
        return self.decoder(output), hidden  # (B, T, V)

    def token_nll(self, features: Tensor, targets: Tensor, chunk_size: int = 1024) -> Tensor:
        """Negative log-likelihood (nats) of each target, in fp32, decoding at most ``chunk_size`` positions at a time.

        features: (N, H); targets: (N,). Chunking bounds the memory of an N x vocab_size logit matrix.
        """
        pieces = [
            F.cross_entropy(self.decoder(part).float(), target, reduction="none")
            for part, target in zip(features.split(chunk_size), targets.split(chunk_size))
        ]
        return torch.cat(pieces) if pieces else features.new_zeros(0)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are one parameter


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph between BPTT windows while keeping the state's values."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)  # type: ignore[return-value]
    return hidden.detach()
