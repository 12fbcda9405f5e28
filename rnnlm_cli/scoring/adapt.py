"""Scores that adapt and combine: a continuous cache, dynamic evaluation and an n-gram mix, in any combination.

The three change the probability of each token, never which tokens are scored, and each token's score depends
only on the text before it (in its file; in its line with ``--context line``):

- **cache** (Grave et al. 2017): p = (1 - lam) p_model + lam p_cache, where p_cache(w) sums
  softmax(theta h_t . h_i) over the last ``window`` positions i < t whose next token was w; h is the top
  recurrent layer's output. Computed for a whole chunk of positions at once: the attention scores of each query
  against its window, and the weights of the keys whose next token is the query's target, summed (only the
  target's probability is needed, so no vocabulary-sized row is built). Where the cache holds nothing yet (a
  stream's first token, each line's first token in line context) the model's probability stands alone.
- **dynamic evaluation**: the text is cut into segments; each is scored with the current weights, then its mean
  loss gives one update (``DynamicEvaluation``), so a segment's score never depends on itself or on what follows.
  Every file starts again from the trained weights; the checkpoint file is never written.
- **n-gram mix**: p = (1 - weight) p + weight p_ngram per token, with p_ngram from a KenLM-readable model queried
  sentence by sentence (``<s>`` before each line, ``</s>`` for its end-of-sentence token), applied last.

The mixtures are computed in float64 from log-probabilities, so a share of 0 gives back the unmixed scores
exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnlm_cli.config import CacheSettings, DynamicSettings, NgramSettings
from rnnlm_cli.errors import ConfigError, DatasetError, InputError
from rnnlm_cli.model import RNNLanguageModel, detach_hidden
from rnnlm_cli.runtime import poll_threads
from rnnlm_cli.scoring import STREAM_CHUNK, line_batches
from rnnlm_cli.tokenizers import Tokenizer

log = logging.getLogger(__name__)

CACHE_SCORES_AT_ONCE = 1 << 22  # attention scores held at once (batch x queries x keys): 16 MB in fp32
CACHE_MIN_QUERIES = 128  # positions scored together by the cache, at least (with short windows)
RMS_EPSILON = 1e-3  # added to each gradient RMS before dividing by it: bounds the steps of weights it never saw move
# the gradient statistics of the rms rule: from the first this-many tokens of the training split, read as
# STATS_ROWS parallel streams in windows of the segment length (the training text's start, never the scored text)
STATS_TOKENS = 50_000
STATS_ROWS = 20
LN10 = math.log(10)


def cache_probabilities(queries: torch.Tensor, targets: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        window: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cache's probability of each target, and whether the cache held anything there.

    queries (B, T, H) and targets (B, T): the positions to score. keys (B, M + T, H) and values (B, M + T): M
    earlier positions (the memory) followed by the queries' own, each a top-layer state and the token that
    followed it. Position t of a row attends to its keys M + t - window ... M + t - 1. Returns two (B, T)
    tensors: fp32 probabilities and a boolean mask.
    """
    batch, length, _ = queries.shape
    memory = keys.shape[1] - length
    probs = queries.new_zeros(batch, length)
    seen = torch.zeros(batch, length, dtype=torch.bool, device=queries.device)
    # queries per chunk: q of them read q + window keys, of which each uses at most window; a small q wastes
    # little and keeps a chunk's scores in the CPU's caches (with window 2000 on 2 cores of an EPYC Zen 4, q = 128
    # took 0.71 times as long as q = 500), and q (q + window) scores per row stay within the budget
    budget = CACHE_SCORES_AT_ONCE // max(1, batch)
    fits = (math.isqrt(window * window + 4 * budget) - window) // 2
    step = max(1, min(fits, max(CACHE_MIN_QUERIES, window // 16)))
    for start in range(0, length, step):
        stop = min(length, start + step)
        low, high = max(0, memory + start - window), memory + start + step - 1  # the keys these queries may see
        if memory + stop - 1 <= low:
            continue
        # every chunk has the same shape, the last one padded (its padding never reaches a real query): so a
        # token's score does not depend on how much text follows it, to the last bit
        chunk_queries, chunk_targets = _padded(queries[:, start:stop], step), _padded(targets[:, start:stop], step)
        chunk_keys, chunk_values = _padded(keys[:, low:high], high - low), _padded(values[:, low:high], high - low)
        # the softmax by hand, in place: these (B, q, k) passes are most of the cache's cost
        scores = torch.bmm(chunk_queries * theta, chunk_keys.transpose(1, 2))  # (B, q, k)
        query_at = torch.arange(memory + start, memory + start + step, device=queries.device)[:, None]
        key_at = torch.arange(low, high, device=queries.device)[None, :]
        blocked = (key_at >= query_at) | (key_at < query_at - window)  # (q, k)
        scores.masked_fill_(blocked, -math.inf)
        top = scores.amax(-1, keepdim=True)
        top.masked_fill_(top == -math.inf, 0.0)  # a query with no keys: its row stays all zeros
        weights = scores.sub_(top).exp_()
        total = weights.sum(-1)
        matching = weights.masked_fill_(chunk_values[:, None, :] != chunk_targets[:, :, None], 0.0).sum(-1)
        count = stop - start
        probs[:, start:stop] = (matching / total.clamp_(min=torch.finfo(total.dtype).tiny))[:, :count]
        seen[:, start:stop] = ~blocked[:count].all(-1)
    return probs, seen


def _padded(rows: torch.Tensor, size: int) -> torch.Tensor:
    """``rows`` (B, n, ...) with zeros appended along dimension 1 up to ``size``."""
    missing = size - rows.shape[1]
    if missing <= 0:
        return rows
    return torch.cat([rows, rows.new_zeros(rows.shape[0], missing, *rows.shape[2:])], dim=1)


def mix(nll: torch.Tensor, log_other: torch.Tensor, share: float, where: torch.Tensor | None = None) -> torch.Tensor:
    """-log((1 - share) exp(-nll) + share exp(log_other)), in float64; ``nll`` itself where ``where`` is False."""
    if share == 0:
        return nll
    keep = math.log1p(-share) if share < 1 else -math.inf
    mixed = -torch.logaddexp(keep - nll, math.log(share) + log_other.double())
    return mixed if where is None else torch.where(where, mixed, nll)


class NgramModel:
    """An ARPA or KenLM binary n-gram model read with the ``kenlm`` module, queried one sentence at a time."""

    def __init__(self, path: str) -> None:
        try:
            import kenlm
        except ImportError:
            raise ConfigError("--ngram reads n-gram models with the kenlm module, which is not installed: "
                              "pip install 'rnnlm-cli[ngram]' (it compiles KenLM, about 3 minutes)") from None
        if not Path(path).is_file():
            raise InputError(f"{path}: {'is a directory' if Path(path).is_dir() else 'no such file'}")
        config = kenlm.Config()
        config.show_progress = False
        began = time.monotonic()
        try:
            with _stderr_silenced():  # KenLM's C++ writes its advice on loading straight to file descriptor 2
                self.model = kenlm.Model(str(path), config)
        except Exception as error:  # noqa: BLE001 - kenlm raises OSError or RuntimeError with its C++ message
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise InputError(f"{path}: not a readable ARPA or KenLM binary n-gram model ({reason})") from None
        self.path = path
        self.order = self.model.order
        log.info("read the %d-gram model %s in %.1f s%s", self.order, path, time.monotonic() - began,
                 "" if _is_binary(path) else " (a KenLM binary file loads faster: kenlm's build_binary makes one)")

    def log_probs(self, words: Sequence[str]) -> np.ndarray:
        """Natural-log probability of each word of one sentence after ``<s>``, then of ``</s>``."""
        sentence = " ".join(words)
        return np.array([score for score, _, _ in self.model.full_scores(sentence, bos=True, eos=True)]) * LN10


def _is_binary(path: str) -> bool:
    with open(path, "rb") as file:
        return file.read(len(b"mmap lm ")) == b"mmap lm "  # KenLM binary files start with this magic


@contextlib.contextmanager
def _stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_ngram(settings: NgramSettings, tokenizer: Tokenizer) -> NgramModel:
    if tokenizer.kind != "word":
        raise ConfigError(f"--ngram mixes word probabilities, and this checkpoint's tokens are {tokenizer.kind} "
                          f"pieces, not words: use a word-level model (rnnlm tokenize --kind word)")
    return NgramModel(settings.path)


class DynamicEvaluation:
    """The update rule of dynamic evaluation, applied in place to a model's weights (see ``DynamicSettings``)."""

    def __init__(self, model: RNNLanguageModel, settings: DynamicSettings, rms: list[torch.Tensor] | None) -> None:
        self.settings = settings
        self.params = list(model.parameters())
        self.trained = [param.detach().clone() for param in self.params]
        self.lr, self.decay = lr, decay = settings.learning_rate, settings.decay
        if settings.rule == "rms":
            if rms is None:
                raise ValueError("the rms rule needs the gradient RMS of every parameter")
            mean = sum(float(r.sum()) for r in rms) / sum(r.numel() for r in rms)
            self.scale = [lr / (r + RMS_EPSILON) for r in rms]  # each weight's step per unit of gradient
            self.pull = [(decay * r / max(mean, 1e-30)).clamp_(max=1.0) for r in rms]  # and its decay rate

    def reset(self) -> None:
        """Back to the trained weights."""
        with torch.no_grad():
            for param, trained in zip(self.params, self.trained):
                param.copy_(trained)

    def update(self, loss: torch.Tensor) -> None:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        have = [index for index, grad in enumerate(grads) if grad is not None]
        params, steps = [self.params[i] for i in have], [grads[i] for i in have]
        # fused multi-tensor ops, one pass over the weights per term (for the small PTB model a third of the time
        # of a loop over the tensors, and then under half that of the segment's backward pass)
        with torch.no_grad():
            if self.settings.rule == "rms":
                torch._foreach_addcmul_(params, steps, [self.scale[i] for i in have], value=-1.0)
                if self.decay:
                    torch._foreach_lerp_(self.params, self.trained, self.pull)
            else:
                if self.lr:
                    torch._foreach_add_(params, steps, alpha=-self.lr)
                if self.decay:
                    torch._foreach_lerp_(self.params, self.trained, self.decay)


def gradient_rms(model: RNNLanguageModel, dataset_dir: str, tokenizer: Tokenizer, segment: int) -> list[torch.Tensor]:
    """Each parameter's root-mean-square gradient over the start of a dataset's training split (the rms rule's
    statistics): STATS_TOKENS tokens as STATS_ROWS streams, one mean loss per window of ``segment`` steps."""
    from rnnlm_cli.data import Dataset

    dataset = Dataset(dataset_dir)
    if dataset.tokenizer.to_dict() != tokenizer.to_dict():
        raise DatasetError(f"{dataset_dir}: its tokenizer is not the checkpoint's, so its gradient statistics would "
                           f"not fit; give the dataset the model was trained on with --dynamic-data")
    ids = np.asarray(dataset.ids("train")[: STATS_TOKENS + 1], dtype=np.int64)
    columns = (len(ids) - 1) // STATS_ROWS
    if columns < 1:
        raise DatasetError(f"{dataset_dir}: its training split is too short for gradient statistics")
    device = model.device
    inputs = torch.from_numpy(ids[: STATS_ROWS * columns].reshape(STATS_ROWS, columns)).to(device)
    targets = torch.from_numpy(ids[1 : STATS_ROWS * columns + 1].reshape(STATS_ROWS, columns)).to(device)
    params = list(model.parameters())
    sums = [torch.zeros_like(param) for param in params]
    hidden, windows, began = None, 0, time.monotonic()
    model.eval()
    with torch.enable_grad():
        for start in range(0, columns, segment):
            poll_threads()
            features, hidden = model.features(inputs[:, start : start + segment], hidden)
            nll = model.token_nll(features.reshape(-1, features.shape[-1]),
                                  targets[:, start : start + segment].reshape(-1), differentiable=True)
            grads = torch.autograd.grad(nll.mean(), params, allow_unused=True)
            for total, grad in zip(sums, grads):
                if grad is not None:
                    total.add_(grad.float().square())
            hidden = detach_hidden(hidden)
            windows += 1
    log.info("dynamic evaluation: gradient RMS from %s tokens of %s's training text in %.1f s",
             f"{STATS_ROWS * columns:,}", dataset_dir, time.monotonic() - began)
    return [(total / windows).sqrt_() for total in sums]


def dynamic_dataset(settings: DynamicSettings, recorded: str | None) -> str:
    """The dataset directory for the rms rule's statistics: --dynamic-data, else the one the checkpoint records."""
    if settings.data is not None:
        return settings.data
    if recorded and Path(recorded).is_dir():
        return recorded
    where = f"the dataset it was trained on ({recorded}) is not there any more" if recorded else \
        "the checkpoint does not say which dataset it was trained on"
    raise ConfigError(f"--dynamic-rule rms scales each weight's step by its gradient RMS on the training text, and "
                      f"{where}: give the dataset directory with --dynamic-data DIR, or use --dynamic-rule sgd, "
                      f"which needs no statistics")


def adapted_precision(precision: str, dynamic: bool) -> str:
    """The precision to score in: fp32 whenever dynamic evaluation is on. Its steps change a weight by about 1e-4 of
    its size, far below bf16's resolution (1/256), so in bf16 products the adapted weights round back to the trained
    ones: on PTB test, with the small preset's model, bf16 kept 112.3 -> 113.7 of fp32's 112.3 -> 97.4."""
    if dynamic and precision == "bf16":
        log.warning("dynamic evaluation runs in fp32: its small steps vanish in bf16 products")
        return "fp32"
    return precision


def rms_statistics(model: RNNLanguageModel, tokenizer: Tokenizer, settings: DynamicSettings,
                   recorded_dataset: str | None) -> list[torch.Tensor] | None:
    """What the update rule of ``settings`` needs from the training text: the rms rule's gradient RMS, or None."""
    if settings.rule != "rms":
        return None
    return gradient_rms(model, dynamic_dataset(settings, recorded_dataset), tokenizer, settings.segment)


class AdaptedScorer:
    """A forward model's per-token scores with the adaptations in force, file by file.

    Call ``start()`` at the beginning of each file, then ``score()`` on its lines in order, a window at a time.
    The model's weights change while dynamic evaluation is on (``start()`` puts the trained ones back).
    """

    def __init__(self, model: RNNLanguageModel, tokenizer: Tokenizer, context: str,
                 cache: CacheSettings | None = None, dynamic: DynamicSettings | None = None,
                 ngram: NgramModel | None = None, ngram_weight: float = 0.0,
                 rms: list[torch.Tensor] | None = None, batch_size: int = 64, keep_features: bool = False) -> None:
        if model.config.direction != "forward":
            raise ConfigError(f"the cache, dynamic evaluation and the n-gram mix score left to right, and this model "
                              f"reads {model.config.direction}; use a forward model")
        self.model, self.tokenizer, self.context = model, tokenizer, context
        self.cache, self.ngram, self.ngram_weight = cache, ngram, ngram_weight
        self.dynamic = DynamicEvaluation(model, dynamic, rms) if dynamic is not None else None
        self.segment = dynamic.segment if dynamic is not None else 0
        self.batch_size = batch_size  # lines per forward call in line context without dynamic evaluation
        # keep_features: record each line's model scores and top-layer states, for tuning (rnnlm_cli.jobs.tune)
        self.keep_features = keep_features
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.start()

    def start(self) -> None:
        """A new file: the trained weights, an empty cache, a fresh state."""
        if self.dynamic is not None:
            self.dynamic.reset()
        self.hidden = None
        self.pending: list[torch.Tensor] = []  # the losses of the segment being scored (dynamic evaluation)
        self.left = self.segment  # tokens until the segment is complete
        hidden_size = self.model.config.hidden_size
        self.memory_keys = torch.zeros(0, hidden_size, device=self.model.device)
        self.memory_values = torch.zeros(0, dtype=torch.long, device=self.model.device)

    def settings(self) -> dict[str, Any]:
        """What is in force, for reports."""
        return {"cache": None if self.cache is None else self.cache.to_dict(),
                "dynamic": None if self.dynamic is None else self.dynamic.settings.to_dict(),
                "ngram": None if self.ngram is None else {"model": self.ngram.path, "order": self.ngram.order,
                                                          "weight": self.ngram_weight}}

    def score(self, texts: Sequence[str], token_lines: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Negative log-likelihood (nats, float64) of every token of the next lines of the file, line by line."""
        if not token_lines:
            return []
        self.model.eval()
        if self.context == "stream":
            scores = self._stream(token_lines)
        elif self.dynamic is not None:  # in order: each line's update reaches the lines after it
            scores = [self._line(line) for line in token_lines]
        else:
            scores = self._lines_batched(token_lines)
        if self.ngram is not None:
            scores = [self._mix_ngram(text, nll) for text, nll in zip(texts, scores)]
        return scores

    def _grad(self) -> contextlib.AbstractContextManager:
        return torch.enable_grad() if self.dynamic is not None else torch.inference_mode()

    def _stream(self, token_lines: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        model = self.model
        targets = torch.tensor([token for line in token_lines for token in line], dtype=torch.long,
                               device=model.device)
        inputs = torch.cat([targets.new_full((1,), self.tokenizer.eos_id), targets[:-1]])  # windows start a line
        scores, states = [], []
        position = 0
        while position < len(targets):
            poll_threads()
            stop = min(len(targets), position + (self.left if self.dynamic is not None else STREAM_CHUNK))
            with self._grad():
                features, self.hidden = model.features(inputs[None, position:stop], self.hidden)
                nll = model.token_nll(features[0], targets[position:stop], differentiable=self.dynamic is not None)
            if self.dynamic is not None:
                self.pending.append(nll.sum())
                self.left -= stop - position
                if self.left == 0:
                    self._update(self.segment)
            scores.append(nll.detach().double().cpu())
            if self.cache is not None or self.keep_features:
                states.append(features[0].detach().float())
            position = stop
        nll = torch.cat(scores)
        lengths = [len(line) for line in token_lines]
        if self.keep_features:
            self.records.extend(zip(nll.split(lengths), torch.cat(states).cpu().split(lengths)))
        if self.cache is not None:
            queries = torch.cat(states)
            keys = torch.cat([self.memory_keys, queries])
            values = torch.cat([self.memory_values, targets])
            probs, seen = cache_probabilities(queries[None], targets[None], keys[None], values[None],
                                              self.cache.window, self.cache.theta)
            nll = mix(nll, probs[0].double().log().cpu(), self.cache.lam, seen[0].cpu())
            self.memory_keys, self.memory_values = keys[-self.cache.window :], values[-self.cache.window :]
        return list(nll.split(lengths))

    def _line(self, line: Sequence[int]) -> torch.Tensor:
        """One line from a fresh state (and, with dynamic evaluation, one update on it afterwards)."""
        model = self.model
        targets = torch.tensor(line, dtype=torch.long, device=model.device)
        inputs = torch.cat([targets.new_full((1,), self.tokenizer.eos_id), targets[:-1]])
        poll_threads()
        with self._grad():
            features, _ = model.features(inputs[None])
            nll = model.token_nll(features[0], targets, differentiable=self.dynamic is not None)
        if self.dynamic is not None:
            self.pending.append(nll.sum())
            self._update(len(line))
        scores = nll.detach().double().cpu()
        states = features[0].detach().float()
        if self.keep_features:
            self.records.append((scores, states.cpu()))
        if self.cache is not None:
            probs, seen = cache_probabilities(states[None], targets[None], states[None], targets[None],
                                              self.cache.window, self.cache.theta)
            scores = mix(scores, probs[0].double().log().cpu(), self.cache.lam, seen[0].cpu())
        return scores

    def _lines_batched(self, token_lines: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Lines from fresh states, batched longest first (the weights do not change), in input order."""
        model = self.model
        results: list[torch.Tensor] = [torch.empty(0)] * len(token_lines)
        kept: list[tuple[torch.Tensor, torch.Tensor]] = [(torch.empty(0), torch.empty(0))] * len(token_lines)
        for batch, lengths, inputs, targets, mask in line_batches(token_lines, self.tokenizer.eos_id, self.batch_size,
                                                                  model.device):
            with torch.inference_mode():
                features, _ = model.features(inputs)  # (B, T, H); no cache query reaches the padding either
                nll = model.token_nll(features[mask], targets[mask]).double().cpu().split(lengths)
                states = features.float()
                if self.cache is not None:
                    probs, seen = cache_probabilities(states, targets, states, targets, self.cache.window,
                                                      self.cache.theta)
                    probs, seen = probs.double().log().cpu(), seen.cpu()
            for row, index in enumerate(batch):
                scores = nll[row]
                if self.keep_features:
                    kept[index] = (scores, states[row, : lengths[row]].cpu())
                if self.cache is not None:
                    scores = mix(scores, probs[row, : lengths[row]], self.cache.lam, seen[row, : lengths[row]])
                results[index] = scores
        if self.keep_features:
            self.records.extend(kept)
        return results

    def _update(self, tokens: int) -> None:
        assert self.dynamic is not None
        loss = torch.stack(self.pending).sum() / tokens
        self.dynamic.update(loss)
        self.pending, self.left = [], self.segment
        if self.hidden is not None:
            self.hidden = detach_hidden(self.hidden)

    def _mix_ngram(self, text: str, nll: torch.Tensor) -> torch.Tensor:
        assert self.ngram is not None
        log_probs = self.ngram.log_probs(self.tokenizer.surface(text))
        if len(log_probs) != len(nll):
            raise AssertionError(f"n-gram and model disagree on the tokens of {text!r}")
        return mix(nll, torch.from_numpy(log_probs), self.ngram_weight)
