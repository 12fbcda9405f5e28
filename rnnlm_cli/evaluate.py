"""Perplexity of a checkpoint on text: every token scored, the same answer at any batch size.

Each line is scored as its tokens followed by the end-of-sentence token; the first token of a
sequence is predicted after ``<eos>``, as in training. Two context modes:

- ``stream``: one file is one long sequence and the hidden state carries across lines (the
  protocol behind published PTB and WikiText-2 numbers, and how the model was trained);
- ``line``: the state starts afresh at each line, as in SRILM and KenLM, so a line's score does
  not depend on its neighbours. Lines are batched, longest first, and put back in input order.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rnnlm_cli.checkpoint import load_for_inference
from rnnlm_cli.config import EvalConfig
from rnnlm_cli.model import RNNLanguageModel
from rnnlm_cli.runtime import resolve_device
from rnnlm_cli.textio import display_name, read_text
from rnnlm_cli.tokenizers import Tokenizer

STREAM_CHUNK = 512  # time steps per forward call in stream mode; the state carries between calls


@dataclass
class CorpusScore:
    """Sums over one corpus (or over all of them); every ratio is computed once from these sums."""

    name: str
    lines: int = 0
    tokens: int = 0  # model tokens scored, one end-of-sentence per line included
    oov: int = 0  # words (or characters) outside the vocabulary, scored as <unk>
    nll: float = 0.0  # total negative log-likelihood, nats
    eos_nll: float = 0.0  # the part of nll spent on end-of-sentence tokens
    words: int = 0  # whitespace-separated words plus one end-of-line per line
    bytes: int = 0  # UTF-8 bytes of the text, one newline per line included

    @property
    def ppl(self) -> float:
        """Perplexity per model token, end-of-sentence included (SRILM's ppl)."""
        return _exp_ratio(self.nll, self.tokens)

    @property
    def ppl1(self) -> float:
        """Perplexity per model token without the end-of-sentence tokens (SRILM's ppl1)."""
        return _exp_ratio(self.nll - self.eos_nll, self.tokens - self.lines)

    @property
    def word_ppl(self) -> float:
        """exp(nll / words): comparable across word, character and subword models."""
        return _exp_ratio(self.nll, self.words)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes if self.bytes else math.nan

    def add(self, other: CorpusScore) -> None:
        for name in ("lines", "tokens", "oov", "nll", "eos_nll", "words", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        values = {
            "name": self.name,
            "lines": self.lines,
            "tokens": self.tokens,
            "oov": self.oov,
            "nll": self.nll,
            "ppl": self.ppl,
            "ppl1": self.ppl1,
            "words": self.words,
            "word_ppl": self.word_ppl,
            "bytes": self.bytes,
            "bits_per_byte": self.bits_per_byte,
        }
        return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                for key, value in values.items()}


def _exp_ratio(nll: float, count: int) -> float:
    if count <= 0:
        return math.nan
    try:
        return math.exp(nll / count)
    except OverflowError:
        return math.inf


@dataclass
class EvalResult:
    checkpoint: str
    context: str
    tokenizer_kind: str
    vocab_size: int
    files: list[CorpusScore] = field(default_factory=list)
    total: CorpusScore = field(default_factory=lambda: CorpusScore("total"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "context": self.context,
            "tokenizer": {"kind": self.tokenizer_kind, "vocab_size": self.vocab_size},
            "oov_convention": "OOV words are scored as <unk> and counted in tokens",
            "files": [score.to_dict() for score in self.files],
            "total": self.total.to_dict(),
        }


def evaluate(config: EvalConfig, progress: bool = False) -> EvalResult:
    """Score every input with the checkpoint; per-file sums and their total.

    ``progress`` shows a tqdm bar per file on stderr (when it is a terminal).
    """
    device = resolve_device(config.device)
    model, tokenizer, _ = load_for_inference(config.checkpoint, device)
    result = EvalResult(config.checkpoint, config.context, tokenizer.kind, tokenizer.vocab_size)
    for path in config.inputs:
        text = read_text(path)
        score = score_text(model, tokenizer, text.lines, config.context, config.batch_size,
                           progress_label=display_name(path) if progress else None)
        score.name = display_name(path)
        result.files.append(score)
        result.total.add(score)
    return result


def score_text(
    model: RNNLanguageModel, tokenizer: Tokenizer, lines: Sequence[str], context: str, batch_size: int = 64,
    progress_label: str | None = None,
) -> CorpusScore:
    """Sums of one text's scores (see :class:`CorpusScore`); a progress bar when ``progress_label`` is given."""
    encoded = tokenizer.encode_many(lines)
    token_lines = [enc.ids + [tokenizer.eos_id] for enc in encoded]
    with tqdm(total=sum(len(ids) for ids in token_lines), desc=progress_label, unit="tok", unit_scale=True,
              file=sys.stderr, leave=False, disable=None if progress_label else True) as bar:
        line_nll = score_token_lines(model, token_lines, tokenizer.eos_id, context, batch_size, bar.update)
    score = CorpusScore("")
    score.lines = len(lines)
    score.tokens = sum(len(ids) for ids in token_lines)
    score.oov = sum(enc.oov for enc in encoded)
    score.nll = float(sum(float(nll.sum(dtype=torch.float64)) for nll in line_nll))
    score.eos_nll = float(sum(float(nll[-1]) for nll in line_nll))
    score.words = sum(len(line.split()) + 1 for line in lines)
    score.bytes = sum(len(line.encode("utf-8")) + 1 for line in lines)
    return score


def score_token_lines(
    model: RNNLanguageModel, lines: Sequence[Sequence[int]], eos_id: int, context: str, batch_size: int = 64,
    on_progress: Callable[[int], object] = lambda tokens: None,
) -> list[torch.Tensor]:
    """Negative log-likelihood (nats) of every token of every line, in input order.

    Each line holds its token ids with the end-of-sentence id last. ``on_progress`` hears how many
    tokens each step scored.
    """
    if not lines:
        return []
    model.eval()
    with torch.inference_mode():
        if context == "stream":
            stream = torch.tensor([token for line in lines for token in line], dtype=torch.long)
            nll = score_stream(model, stream, eos_id, on_progress)
            return list(nll.split([len(line) for line in lines]))
        return _score_lines_batched(model, lines, eos_id, batch_size, on_progress)


def score_stream(model: RNNLanguageModel, targets: torch.Tensor, eos_id: int,
                 on_progress: Callable[[int], object] = lambda tokens: None) -> torch.Tensor:
    """Per-token nll of one token stream, predicted left to right with the state carried throughout."""
    device = model.decoder.weight.device
    targets = targets.to(device)
    inputs = torch.cat([targets.new_full((1,), eos_id), targets[:-1]])
    hidden = None
    pieces = []
    for start in range(0, len(targets), STREAM_CHUNK):
        stop = start + STREAM_CHUNK
        features, hidden = model.features(inputs[None, start:stop], hidden)  # (1, T, H)
        pieces.append(model.token_nll(features[0], targets[start:stop]))
        on_progress(len(pieces[-1]))
    return torch.cat(pieces).cpu()


def _score_lines_batched(
    model: RNNLanguageModel, lines: Sequence[Sequence[int]], eos_id: int, batch_size: int,
    on_progress: Callable[[int], object],
) -> list[torch.Tensor]:
    device = model.decoder.weight.device
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]), reverse=True)
    results: list[torch.Tensor | None] = [None] * len(lines)
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        lengths = [len(lines[i]) for i in batch]
        width = lengths[0]
        targets = np.full((len(batch), width), eos_id, dtype=np.int64)
        for row, index in enumerate(batch):
            targets[row, : lengths[row]] = lines[index]
        inputs = np.concatenate([np.full((len(batch), 1), eos_id, dtype=np.int64), targets[:, :-1]], axis=1)
        mask = torch.from_numpy(np.arange(width)[None, :] < np.asarray(lengths)[:, None]).to(device)
        # padding sits after each line's end, so it never reaches the positions that are scored
        features, _ = model.features(torch.from_numpy(inputs).to(device))  # (B, T, H)
        nll = model.token_nll(features[mask], torch.from_numpy(targets).to(device)[mask]).cpu()
        for index, part in zip(batch, nll.split(lengths)):
            results[index] = part
        on_progress(len(nll))
    return results  # type: ignore[return-value]
