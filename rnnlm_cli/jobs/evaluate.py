"""Perplexity of a checkpoint on text: every token scored, the same answer at any batch size.

Each line is scored as its tokens followed by the end-of-sentence token; the first token of a
sequence is predicted after ``<eos>``, as in training. Two context modes:

- ``stream`` (the default): one file is one long sequence and the hidden state carries across
  lines. The model was trained that way, and published PTB and WikiText-2 perplexities are
  measured that way, so this is the number to compare with them (and with training's validation).
- ``line``: the state starts afresh at each line, as in SRILM and KenLM, so a line's score does
  not depend on its neighbours. Lines are batched longest first and put back in input order.

Input is read and scored a window of lines at a time, so per-line and per-token results stream
out before the whole input has been read, and memory stays bounded on big files.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rnnlm_cli.config import EvalConfig
from rnnlm_cli.errors import CheckpointError, ConfigError, InputError
from rnnlm_cli.runtime import (
    autocast,
)
from rnnlm_cli.scoring import (
    score_lines_backward,
    score_stream_lines,
    score_token_lines,
)
from rnnlm_cli.scoring.adapt import (
    AdaptedScorer,
    adapted_precision,
    open_ngram,
    rms_statistics,
)
from rnnlm_cli.scoring.inference import load_model
from rnnlm_cli.textio import STDIN, display_name, iter_lines, read_path_list

log = logging.getLogger(__name__)

# Above this many UTF-8 bytes per whitespace word the text has too few spaces for a word ppl to mean anything
# (Japanese or Chinese: a "word" is then most of a line); English has about 6, PTB 5.7, a Japanese novel 60-100.
SPACELESS_BYTES_PER_WORD = 20
WINDOW_BATCHES = 8  # line mode reads this many batches at a time to sort by length (the first window is one)
LOG10 = math.log(10)


@dataclass
class LineScore:
    """The scores of one input line."""

    file: str  # the input's display name ("<stdin>" for -)
    line: int  # line number in that input, from 1
    token_nll: np.ndarray  # nats per token, end-of-sentence last (finite: a model's NaN is an error)
    oov_positions: tuple[int, ...]  # tokens whose word (or character) is outside the vocabulary
    words: int  # whitespace words plus one for the line end (OOV words left out when they are not scored)
    bytes: int  # UTF-8 bytes, the newline included
    pieces: list[str] | None = None  # the text of each token, end-of-sentence last, when asked for
    # a biLM's right-to-left scores of the same tokens, in the line's order (the line-start score last)
    backward_token_nll: np.ndarray | None = None
    excluded: tuple[int, ...] = ()  # tokens left out of the sums and counts (--exclude-oov)

    @property
    def scored(self) -> np.ndarray:
        """Which tokens count: all but the excluded ones."""
        mask = np.ones(len(self.token_nll), dtype=bool)
        mask[list(self.excluded)] = False
        return mask

    @property
    def tokens(self) -> int:
        """Tokens scored (an excluded OOV token is not)."""
        return len(self.token_nll) - len(self.excluded)

    @property
    def oov(self) -> int:
        return len(self.oov_positions)

    @property
    def nll(self) -> float:
        return float(self.token_nll[self.scored].sum())

    @property
    def backward_nll(self) -> float | None:
        return None if self.backward_token_nll is None else float(self.backward_token_nll[self.scored].sum())

    @property
    def log10_prob(self) -> float:
        return -self.nll / LOG10

    @property
    def ppl(self) -> float:
        return _exp_ratio(self.nll, self.tokens)


@dataclass
class CorpusScore:
    """Sums over one corpus (or over all of them); every ratio is computed once from these sums."""

    name: str
    lines: int = 0
    tokens: int = 0  # model tokens scored, one end-of-sentence per line included
    oov: int = 0  # words (or characters) outside the vocabulary
    nll: float = 0.0  # total negative log-likelihood, nats
    words: int = 0  # whitespace-separated words plus one end-of-line per line
    bytes: int = 0  # UTF-8 bytes of the text, one newline per line included
    backward_nll: float | None = None  # a biLM's right-to-left direction, line by line, on the same tokens

    @property
    def ppl(self) -> float:
        """Perplexity per model token, end-of-sentence included (SRILM's ppl)."""
        return _exp_ratio(self.nll, self.tokens)

    @property
    def ppl1(self) -> float:
        """SRILM's ppl1: the same total nll (end-of-sentence tokens included) per token other than the ends of
        sentence, exp(nll / (tokens - lines)); SRILM's ppl1 = 10^(-logprob / (words - OOVs))."""
        return _exp_ratio(self.nll, self.tokens - self.lines)

    @property
    def word_ppl(self) -> float:
        """exp(nll / words): comparable across word, character and subword models."""
        return _exp_ratio(self.nll, self.words)

    @property
    def spaceless(self) -> bool:
        """Whether the text has too few spaces for ``word_ppl`` to compare anything (see SPACELESS_BYTES_PER_WORD)."""
        return self.words > 0 and self.bytes / self.words > SPACELESS_BYTES_PER_WORD

    @property
    def backward_ppl(self) -> float | None:
        return None if self.backward_nll is None else _exp_ratio(self.backward_nll, self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes if self.bytes else math.nan

    def add_line(self, line: LineScore) -> None:
        self.lines += 1
        self.tokens += line.tokens
        self.oov += line.oov
        self.nll += line.nll
        self.words += line.words
        self.bytes += line.bytes
        if line.backward_nll is not None:
            self.backward_nll = (self.backward_nll or 0.0) + line.backward_nll

    def add(self, other: CorpusScore) -> None:
        for name in ("lines", "tokens", "oov", "nll", "words", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.backward_nll is not None:
            self.backward_nll = (self.backward_nll or 0.0) + other.backward_nll

    def to_dict(self) -> dict[str, Any]:
        values = {
            "file": self.name,  # "total" in the row of sums
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
        if self.backward_nll is not None:
            values.update(backward_nll=self.backward_nll, backward_ppl=self.backward_ppl)
        return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                for key, value in values.items()}


def _exp_ratio(nll: float, count: int) -> float:
    if count <= 0:
        return math.nan
    try:
        return math.exp(nll / count)
    except OverflowError:
        return math.inf


def oov_convention(exclude_oov: bool) -> str:
    if exclude_oov:
        return "OOV tokens are neither scored nor counted (SRILM's default)"
    return "OOV words are scored as <unk> and counted in tokens"


@dataclass
class EvalResult:
    checkpoint: str
    context: str
    exclude_oov: bool
    precision: str
    tokenizer_kind: str
    vocab_size: int
    direction: str = "forward"  # of the model: forward | backward | both
    # the adaptations in force (rnnlm_cli.scoring.adapt), each None or its settings
    adaptations: dict[str, Any] = field(default_factory=lambda: {"cache": None, "dynamic": None, "ngram": None})
    files: list[CorpusScore] = field(default_factory=list)
    total: CorpusScore = field(default_factory=lambda: CorpusScore("total"))

    @property
    def oov_convention(self) -> str:
        return oov_convention(self.exclude_oov)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "context": self.context,
            "exclude_oov": self.exclude_oov,
            "oov_convention": self.oov_convention,
            "precision": self.precision,
            "direction": self.direction,
            "tokenizer": {"kind": self.tokenizer_kind, "vocab_size": self.vocab_size},
            "adaptations": self.adaptations,
            "files": [score.to_dict() for score in self.files],
            "total": self.total.to_dict(),
        }


def evaluate(config: EvalConfig, progress: bool = False) -> EvalResult:
    """Score every input with the checkpoint; per-file sums and their total.

    ``progress`` shows a tqdm bar per file on stderr (when it is a terminal).
    """
    scorer = Scorer(config)
    result = EvalResult(config.checkpoint, scorer.context, config.exclude_oov, scorer.precision,
                        scorer.tokenizer.kind, scorer.tokenizer.vocab_size, scorer.direction)
    if scorer.adapter is not None:
        result.adaptations = scorer.adapter.settings()
    for path in scorer.inputs:
        score = CorpusScore(display_name(path))
        for line in scorer.score_file(path, progress=progress):
            score.add_line(line)
        result.files.append(score)
        result.total.add(score)
        if score.spaceless:
            log.warning("%s has %.0f bytes per space-separated word, so its word ppl treats most of a line as one "
                        "word; compare models on it by bits/byte", score.name, score.bytes / score.words)
    return result


def iter_line_scores(config: EvalConfig, pieces: bool = False) -> Iterator[LineScore]:
    """Every line of every input, in input order, as soon as it is scored.

    The checkpoint and the inputs are checked when this is called, before the first line is read.
    ``pieces`` adds each token's text, for per-token output.
    """
    scorer = Scorer(config)
    return (line for path in scorer.inputs for line in scorer.score_file(path, pieces=pieces))


class Scorer:
    """A checkpoint loaded for scoring, with the inputs of ``config`` checked up front."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        loaded = load_model(config.checkpoint, config.device, config.threads)
        self.device, self.model, self.tokenizer, checkpoint = loaded.device, loaded.model, loaded.tokenizer, \
            loaded.checkpoint
        self.inputs = resolve_inputs(config)
        self.direction = self.model.config.direction
        self.context = config.context
        if self.direction == "backward" and self.context == "stream":
            log.info("a backward model is scored line by line: each line right to left, from a fresh state")
            self.context = "line"
        self.precision = adapted_precision(config.precision, config.dynamic is not None)
        self.adapter = build_adapter(config, self.model, self.tokenizer, checkpoint.data.get("dataset"), self.context,
                                     self.device, self.precision) if config.adapted else None

    def score_file(self, path: str, pieces: bool = False, progress: bool = False) -> Iterator[LineScore]:
        config, tokenizer = self.config, self.tokenizer
        name = display_name(path)
        size = None if path == STDIN else Path(path).stat().st_size
        # the file's own name: a long path would leave the bar no room in an 80-column terminal
        bar = tqdm(total=size, desc=Path(name).name, unit="B", unit_scale=True, leave=False, file=sys.stderr,
                   disable=None if progress else True)
        numbered = enumerate(iter_lines(path, errors=self.config.encoding_errors), start=1)
        hidden = None  # stream mode: the state carried from one window to the next
        if self.adapter is not None:
            self.adapter.start()
        with bar:
            growth = WINDOW_BATCHES if self.context == "line" else 1
            for window in _windows(numbered, config.batch_size, growth):
                texts = [text for _, text in window]
                encoded = tokenizer.encode_many(texts)
                token_lines = [enc.ids + [tokenizer.eos_id] for enc in encoded]
                with autocast(self.device, self.precision):
                    line_nll, backward, hidden = self._score_window(texts, token_lines, hidden)
                for index, ((number, text), enc, nll) in enumerate(zip(window, encoded, line_nll)):
                    yield self._line_score(name, number, text, enc.oov_positions, nll, pieces,
                                           None if backward is None else backward[index])
                bar.update(sum(len(text.encode("utf-8")) + 1 for text in texts))

    def _score_window(self, texts: list[str], token_lines: list[list[int]], hidden):
        """Per-token nll of a window's lines, a biLM's backward scores (or None), and the stream state after it."""
        eos, batch_size = self.tokenizer.eos_id, self.config.batch_size
        if self.adapter is not None:
            return self.adapter.score(texts, token_lines), None, None
        backward = None
        if self.direction != "forward":
            backward = score_lines_backward(self.model, token_lines, eos, batch_size)
        if self.direction == "backward":
            return backward, None, None
        if self.context == "stream":
            line_nll, hidden = score_stream_lines(self.model, token_lines, eos, hidden)
            return line_nll, backward, hidden
        return score_token_lines(self.model, token_lines, eos, "line", batch_size), backward, None

    def _line_score(self, name: str, number: int, text: str, oov_positions: tuple[int, ...],
                    nll: torch.Tensor, pieces: bool, backward: torch.Tensor | None = None) -> LineScore:
        token_nll = nll.double().numpy()
        backward_nll = None if backward is None else backward.double().numpy()
        for scores in (token_nll, backward_nll):  # a score that is not a number would vanish from no sum
            if scores is not None and not np.isfinite(scores).all():
                position = int(np.flatnonzero(~np.isfinite(scores))[0])
                token = [*self.tokenizer.surface(text), self.tokenizer.piece(self.tokenizer.eos_id)][position]
                raise CheckpointError(f"{self.config.checkpoint}: the model gives token {position + 1} ({token!r}) of "
                                      f"{name}, line {number} a score of {scores[position]} (its weights are broken)")
        words = len(text.split()) + 1
        excluded = oov_positions if self.config.exclude_oov else ()
        if excluded and self.tokenizer.kind == "word":
            words -= len(excluded)
        return LineScore(name, number, token_nll, oov_positions, words, len(text.encode("utf-8")) + 1,
                         [*self.tokenizer.surface(text), self.tokenizer.piece(self.tokenizer.eos_id)]
                         if pieces else None, backward_nll, excluded)


def build_adapter(config: EvalConfig, model, tokenizer, recorded_dataset: str | None, context: str,
                  device, precision: str) -> AdaptedScorer:
    """The adaptations of ``config`` set up for ``model``: the n-gram opened, the rms rule's statistics computed."""
    ngram = open_ngram(config.ngram, tokenizer) if config.ngram is not None else None
    rms = None
    if config.dynamic is not None:
        with autocast(device, precision):
            rms = rms_statistics(model, tokenizer, config.dynamic, recorded_dataset)
    return AdaptedScorer(model, tokenizer, context, cache=config.cache, dynamic=config.dynamic, ngram=ngram,
                         ngram_weight=config.ngram.weight if config.ngram is not None else 0.0, rms=rms,
                         batch_size=config.batch_size)


def resolve_inputs(config: EvalConfig) -> list[str]:
    """The inputs of ``config`` (--files-from expanded), checked before any work starts."""
    inputs = list(config.inputs)
    if config.files_from is not None:
        inputs += read_path_list(config.files_from)
    if not inputs:
        raise ConfigError("no inputs to evaluate: the --files-from list is empty")
    if inputs.count(STDIN) + (config.files_from == STDIN) > 1:
        raise ConfigError("standard input (-) can be read only once")
    for path in inputs:
        if path != STDIN and not Path(path).is_file():
            reason = "is a directory" if Path(path).is_dir() else "no such file"
            raise InputError(f"{path}: {reason}")
    return inputs


def _windows(numbered: Iterator[tuple[int, str]], batch_size: int, growth: int) -> Iterator[list[tuple[int, str]]]:
    """Lines in windows: one batch first, so that output starts at once, then ``growth`` batches."""
    size = batch_size
    while window := list(islice(numbered, size)):
        yield window
        size = batch_size * growth
