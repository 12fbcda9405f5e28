"""The RNN language model: Embedding -> recurrent layers -> Affine -> Softmax (full or adaptive).

Knows nothing of files, tokenizers or the CLI. ``ModelConfig`` is the only way to build a model.
Inference runs the recurrent layers as one fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` call;
training runs them layer by layer so that every dropout variant fits between them, and on CPUs
trains LSTMs with the GEMM-batched layer of ``lstm_cpu`` (same weights, the same math up to fp32 rounding).

The output layer is a full softmax over the vocabulary, or an adaptive softmax (Grave et al. 2017,
``nn.AdaptiveLogSoftmaxWithLoss``): the most frequent words and one entry per cluster in a head, the
rarer words in clusters behind smaller projections, so most tokens cost a product with a few thousand
rows instead of the whole vocabulary. It relies on ids ordered by frequency, which the tokenizers give.

Direction: a ``forward`` model reads left to right; a ``backward`` one is the same network reading each
sequence right to left (callers reverse the tokens); ``both`` is an ELMo-style biLM: a second recurrent
stack, ``rnn_backward``, for the right-to-left direction, sharing the embedding and the output layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm_cli.config import ADAPTIVE_DIV, ModelConfig
from rnnlm_cli.model.lstm_cpu import lstm_layer
from rnnlm_cli.model.output_loss import linear_cross_entropy, linear_nll

# LSTM state is (h, c); the other cells carry h alone. Each is (layers, batch, hidden_size).
Hidden = Tensor | tuple[Tensor, Tensor]
# In bf16 and from this width on, lstm_cpu trains faster on CPUs than oneDNN's fused LSTM. Measured
# per layer, forward + backward, batch 20: 650 units x 35 steps: lstm_cpu bf16 80 ms, oneDNN fp32
# 86 ms, oneDNN bf16 107 ms (lstm_cpu fp32 208 ms); 200 units x 20 steps: lstm_cpu bf16 13.7 ms,
# oneDNN bf16 6.0 ms, oneDNN fp32 7.3 ms.
CPU_LSTM_KERNEL_MIN_HIDDEN = 512


class RNNLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.emb_size)
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU}.get(config.cell, nn.RNN)
        extra = {"nonlinearity": config.cell.removeprefix("rnn_")} if rnn_class is nn.RNN else {}
        # sequence-first: (T, B, features)
        self.rnn: nn.RNNBase = rnn_class(config.emb_size, config.hidden_size, config.layers, **extra)
        # the fused call's own dropout between layers (set here: the constructor warns for one layer)
        self.rnn.dropout = config.dropouts()[1] if config.layers > 1 else 0.0
        if config.direction == "both":  # the right-to-left stack of a biLM
            self.rnn_backward: nn.RNNBase = rnn_class(config.emb_size, config.hidden_size, config.layers, **extra)
            self.rnn_backward.dropout = self.rnn.dropout
        self.decoder: nn.Module
        if config.softmax == "adaptive":
            self.decoder = nn.AdaptiveLogSoftmaxWithLoss(config.hidden_size, config.vocab_size, config.cutoffs,
                                                         div_value=float(ADAPTIVE_DIV))
        else:
            self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()
        if config.softmax != "adaptive" and not config.tie_weights:
            # the output weight (vocab x hidden) kept column-major, i.e. hidden x vocab in memory: the products
            # logits = h @ W.T and W's gradient then read and write both operands in row-major order, which
            # oneDNN's bf16 kernels run about twice as fast as the transposed forms on AMX CPUs (medium preset's
            # output layer and loss: 47 -> 36 ms per step). Same values, same shape; tied weights stay row-major
            # (the embedding reads their rows).
            self.decoder.weight = nn.Parameter(self.decoder.weight.detach().t().contiguous().t())
        self._single_layers: dict[int, nn.RNNBase] = {}  # shape templates for per-layer calls (no weights)
        # in training, the embedding's gradient as a sparse tensor of the rows read instead of a dense, mostly
        # zero vocabulary x emb_size one; the trainer turns it on where its optimizer step takes one
        self.sparse_embedding_gradient = False

    def reset_parameters(self) -> None:
        r = self.config.init_range
        nn.init.uniform_(self.embedding.weight, -r, r)
        if self.config.init_recurrent:
            for backward in self.config.readings():
                for parameter in self.stack(backward).parameters():
                    nn.init.uniform_(parameter, -r, r)
        if self.config.forget_bias is not None:  # gates i, f, g, o: the second quarter of each bias
            hidden = self.config.hidden_size
            with torch.no_grad():
                for backward in self.config.readings():
                    for name, parameter in self.stack(backward).named_parameters():
                        if name.startswith("bias_"):
                            parameter[hidden : 2 * hidden] = self.config.forget_bias if "ih" in name else 0.0
        if self.config.softmax == "adaptive":
            self.decoder.reset_parameters()  # PyTorch's own initialisation of the head and cluster projections
            return
        nn.init.zeros_(self.decoder.bias)
        if not self.config.tie_weights:
            nn.init.uniform_(self.decoder.weight, -r, r)

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        shape = (self.config.layers, batch_size, self.config.hidden_size)
        zeros = torch.zeros(shape, device=device or self.device)
        return (zeros, zeros.clone()) if self.config.cell == "lstm" else zeros

    def stack(self, backward: bool = False) -> nn.RNNBase:
        """The recurrent layers of one direction (a backward-only model has just the one stack)."""
        return self.rnn_backward if backward and self.config.direction == "both" else self.rnn

    def features(self, ids: Tensor, hidden: Hidden | None = None, backward: bool = False) -> tuple[Tensor, Hidden]:
        """Top-layer outputs before the output layer, (B, T, H), and the new hidden state.

        ``backward`` runs the right-to-left stack of a biLM over ``ids``, which the caller has reversed.
        """
        p_input, p_hidden, p_output = self.config.dropouts()
        rnn = self.stack(backward)
        x = self._embed(ids.t())  # (T, B, E)
        if not self.training:
            output, hidden = rnn(x, hidden)  # (T, B, H)
            return output.transpose(0, 1), hidden
        x = self._dropout(x, p_input)
        if self._fused_in_training(x):
            output, hidden = rnn(x, hidden)
            return self._dropout(output, p_output).transpose(0, 1), hidden
        states = []
        for layer in range(self.config.layers):
            x, state = self._layer(rnn, layer, x, _layer_state(hidden, layer))
            x = self._dropout(x, p_hidden if layer < self.config.layers - 1 else p_output)
            states.append(state)
        return x.transpose(0, 1), _stack_states(states)

    def last_states(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Hidden]:
        """For right-padded sequences ``ids`` (B, T) of ``lengths`` (each at least 1), in eval mode: the top
        layer's output at each sequence's own last token (B, H) and the hidden state there."""
        _, hidden = self.packed_features(ids, lengths)
        top = hidden[0] if isinstance(hidden, tuple) else hidden  # (layers, B, H)
        return top[-1], hidden

    def packed_features(self, ids: Tensor, lengths: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """For right-padded sequences ``ids`` (B, T) of ``lengths`` (each at least 1, the longest T), in eval mode,
        each row from its own state in ``hidden``: the top layer's outputs (B, T, H; zeros past a row's length) and
        each row's hidden state after its own last token. The padding is never read."""
        x = self.embedding(ids.t())  # (T, B, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        output, hidden = self.rnn(packed, hidden)  # rows come back in input order
        output, _ = nn.utils.rnn.pad_packed_sequence(output, total_length=ids.shape[1])
        return output.transpose(0, 1), hidden

    def forward(self, ids: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """Logits for the next token at every position, (B, T, V), and the new hidden state."""
        output, hidden = self.features(ids, hidden)
        return self.logits(output), hidden

    def logits(self, features: Tensor) -> Tensor:
        """Next-token logits (..., V) from top-layer features (..., H): softmax of them gives the probabilities.
        The adaptive softmax gives its log-probabilities (fp32), which are logits of the same distribution."""
        if self.config.softmax == "adaptive":
            with _fp32(features):
                flat = features.reshape(-1, features.shape[-1]).float()
                return self.decoder.log_prob(flat).view(*features.shape[:-1], -1)
        return self.decoder(features)

    def loss(self, features: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (fp32) of the next-token predictions from top-layer features (N, H), for training.

        On CPUs the full softmax and the loss run as one step (``output_loss``), in the autocast dtype. The
        adaptive softmax computes only the head and the clusters that hold targets.
        """
        if self.config.softmax == "adaptive":
            with _fp32(features):
                return self.decoder(features.float(), targets).loss
        if features.device.type == "cpu":
            return linear_cross_entropy(features, self.decoder.weight, self.decoder.bias, targets, _cpu_dtype())
        return F.cross_entropy(self.decoder(features).float(), targets)

    def token_nll(self, features: Tensor, targets: Tensor, chunk_size: int = 1024,
                  differentiable: bool = False) -> Tensor:
        """Negative log-likelihood (nats) of each target, in fp32, decoding at most ``chunk_size`` positions at a time.

        features: (N, H); targets: (N,). Chunking bounds the memory of an N x vocab_size logit matrix. On CPUs the
        full softmax scores each chunk in one pass over its logits (``output_loss.linear_nll``), which keeps no
        graph; ``differentiable`` takes PyTorch's cross-entropy instead, for gradients of the scores.
        """
        chunks = list(zip(features.split(chunk_size), targets.split(chunk_size)))
        if self.config.softmax == "adaptive":
            with _fp32(features):
                pieces = [-self.decoder(part.float(), target).output for part, target in chunks]
        elif features.device.type == "cpu" and not differentiable:
            weight, bias, dtype = self.decoder.weight, self.decoder.bias, _cpu_dtype()
            pieces = [linear_nll(part, weight, bias, target, dtype) for part, target in chunks]
        else:
            pieces = [F.cross_entropy(self.decoder(part).float(), target, reduction="none") for part, target in chunks]
        return torch.cat(pieces) if pieces else features.new_zeros(0)

    def hidden_gradient_norms(self, ids: Tensor, targets: Tensor) -> Tensor:
        """How strongly the loss at the last step of a window reaches back to each earlier hidden state.

        ``ids`` (B, T) are read one step at a time (eval mode, fp32, no dropout); the loss is the mean
        cross-entropy of the predictions ``targets`` (B,) after the last step. Returns (T - 1,): entry
        k - 1 is the norm of d loss / d h over all layers and rows for the state that the loss is k steps
        after (k = 1 ... T - 1). Falling with k is a vanishing gradient; growing is an exploding one. The
        parameters' gradients are left untouched.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.enable_grad(), torch.autocast(ids.device.type, enabled=False):
                inputs = self.embedding(ids.t())  # (T, B, E)
                state: Hidden | None = None
                states = []
                for step in range(inputs.shape[0]):
                    if state is not None:
                        states.append(state[0] if isinstance(state, tuple) else state)  # h: (layers, B, H)
                    output, state = self.rnn(inputs[step : step + 1], state)
                loss = F.cross_entropy(self.logits(output[0]).float(), targets)
                grads = torch.autograd.grad(loss, states)
        finally:
            self.train(was_training)
        return torch.stack([grad.norm() for grad in reversed(grads)]).detach()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are one parameter

    def multiply_adds_per_token(self) -> int:
        """Roughly the multiply-adds of one token's forward pass: each weight but the embedding's is used once
        (a tied output matrix included), which is what decides whether a second CPU thread pays."""
        return sum(p.numel() for name, p in self.named_parameters(remove_duplicate=False)
                   if not name.startswith("embedding."))

    def _embed(self, ids: Tensor) -> Tensor:
        p = self.config.word_dropout
        if not self.training or p == 0:
            return F.embedding(ids, self.embedding.weight, sparse=self.training and self.sparse_embedding_gradient)
        keep = _keep_mask((self.config.vocab_size, 1), p, self.embedding.weight)
        return F.embedding(ids, self.embedding.weight * keep)

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        """Dropout on (T, B, F); variational dropout shares one mask across the time steps."""
        if p == 0:
            return x
        shape = (1, *x.shape[1:]) if self.config.variational else x.shape
        return x * _keep_mask(shape, p, x)

    def _cpu_lstm_kernel(self, x: Tensor) -> bool:
        config = self.config
        return (config.cell == "lstm" and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and config.hidden_size >= CPU_LSTM_KERNEL_MIN_HIDDEN)

    def _fused_in_training(self, x: Tensor) -> bool:
        """cuDNN / oneDNN run all layers in one call, with standard (not variational) dropout between them."""
        return not self.config.variational and not self._cpu_lstm_kernel(x)

    def _layer(self, rnn: nn.RNNBase, layer: int, x: Tensor, state: Hidden | None) -> tuple[Tensor, Hidden]:
        """One recurrent layer of ``rnn`` over the sequence x (T, B, F) in training."""
        weights = rnn.all_weights[layer]  # [w_ih, w_hh, b_ih, b_hh]
        if self._cpu_lstm_kernel(x):
            batch = x.shape[1]
            h0, c0 = state if state is not None else (x.new_zeros(batch, self.config.hidden_size),) * 2
            output, h, c = lstm_layer(x, h0, c0, *weights, dtype=_cpu_dtype())
            return output, (h, c)
        template = self._single_layer(layer)
        names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        hx = None if state is None else (tuple(s[None] for s in state) if isinstance(state, tuple) else state[None])
        output, new = torch.func.functional_call(template, dict(zip(names, weights)), (x, hx))
        return output, (tuple(s[0] for s in new) if isinstance(new, tuple) else new[0])

    def _single_layer(self, layer: int) -> nn.RNNBase:
        if layer not in self._single_layers:
            size = self.config.emb_size if layer == 0 else self.config.hidden_size
            rnn_class = type(self.rnn)
            extra = {"nonlinearity": self.rnn.nonlinearity} if rnn_class is nn.RNN else {}
            self._single_layers[layer] = rnn_class(size, self.config.hidden_size, 1, device="meta", **extra)
        return self._single_layers[layer]


def _cpu_dtype() -> torch.dtype:
    """The dtype of matrix products on the CPU: the autocast one (bf16) if autocast is on, else fp32."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32


def _fp32(like: Tensor) -> torch.autocast:
    """Autocast off: PyTorch's adaptive softmax mixes dtypes under CPU autocast (its bf16 cluster scores cannot
    be copied into its fp32 output), and its small products cost little in fp32."""
    return torch.autocast(like.device.type, enabled=False)


def _keep_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Inverted-dropout mask: 0 with probability p, else 1 / (1 - p)."""
    # torch.rand + an in-place compare and scale: several times faster than bernoulli_ on CPUs, and without the
    # temporaries of (rand >= p).float() / (1 - p) (a 35 x 20 x 650 mask: 3.5 -> 2.5 ms)
    return torch.rand(shape, device=like.device).ge_(p).mul_(1 / (1 - p)).to(like.dtype)


def _layer_state(hidden: Hidden | None, layer: int) -> Hidden | None:
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return hidden[0][layer], hidden[1][layer]
    return hidden[layer]


def _stack_states(states: list[Hidden]) -> Hidden:
    if isinstance(states[0], tuple):
        return torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states])
    return torch.stack(states)


def select_rows(hidden: Hidden, rows: Tensor) -> Hidden:
    """The hidden state of the batch rows ``rows`` (in that order, repeats allowed)."""
    if isinstance(hidden, tuple):
        return tuple(h.index_select(1, rows) for h in hidden)  # type: ignore[return-value]
    return hidden.index_select(1, rows)


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph between BPTT windows while keeping the state's values."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)  # type: ignore[return-value]
    return hidden.detach()
