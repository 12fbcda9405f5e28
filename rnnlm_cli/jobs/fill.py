"""Fill in the blank: rank the fillers of a sentence's blank by the probability of the whole sentence.

A filler's score is the log-probability of the complete line with the filler in the blank, its end of line
included: the left context, the filler and the right context all count, so the words after the blank
(``said hi to ___ .`` vs ``___ said hi``) take part in the ranking.

- Word models rank every word of the vocabulary (``<unk>`` and ``<eos>`` aside) unless candidates are given:
  the left context runs once, then the fillers run through the right context in batches.
- With ``candidates`` (any tokenizer) each filled-in sentence is scored as a line, as ``rnnlm eval --context line``
  scores it; a candidate may be several tokens long.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from rnnlm_cli.config import FillConfig
from rnnlm_cli.errors import ConfigError, InputError
from rnnlm_cli.model import RNNLanguageModel, select_rows
from rnnlm_cli.runtime import autocast, poll_threads
from rnnlm_cli.scoring import score_lines_backward, score_token_lines
from rnnlm_cli.scoring.inference import load_model

log = logging.getLogger(__name__)


@dataclass
class Filler:
    text: str  # what goes in the blank
    logprob: float  # natural-log probability of the whole sentence with this filler, its end of line included
    probability: float  # this filler's share among all the fillers scored for the sentence

    def to_dict(self) -> dict[str, Any]:
        return {"filler": self.text, "logprob": self.logprob, "probability": self.probability}


@dataclass
class FillResult:
    sentence: str
    fillers: list[Filler]  # the best ones, best first
    scored: int  # fillers scored: the vocabulary (less <unk> and <eos>) or the candidates in the vocabulary
    left_out: list[str] = field(default_factory=list)  # candidates outside the vocabulary

    def to_dict(self) -> dict[str, Any]:
        return {"sentence": self.sentence, "fillers": [filler.to_dict() for filler in self.fillers],
                "scored": self.scored, "left_out": self.left_out}


def split_at_blank(sentence: str, blank: str) -> tuple[str, str]:
    """The text before and after the one blank of ``sentence``."""
    count = sentence.count(blank)
    if count != 1:
        found = "no" if count == 0 else f"{count}"
        raise InputError(f"{sentence!r} has {found} blanks; a sentence to fill needs exactly one {blank}")
    left, right = sentence.split(blank)
    return left, right


class BlankFiller:
    """A loaded checkpoint that fills blanks: ``BlankFiller(config).fill(sentences)``."""

    def __init__(self, config: FillConfig) -> None:
        self.config = config
        loaded = load_model(config.checkpoint, config.device, config.threads)
        self.device, self.model, self.tokenizer = loaded.device, loaded.model, loaded.tokenizer
        if config.candidates is None and self.tokenizer.kind != "word":
            raise ConfigError(f"a {self.tokenizer.kind} model ranks whole strings only: give --candidates a,b,c")
        self._warned_context = False
        # candidates outside the vocabulary cannot be ranked: left out once, for every sentence
        self.candidates = [c for c in config.candidates or [] if not self.tokenizer.encode(c).oov]
        self.left_out = [c for c in config.candidates or [] if c not in self.candidates]
        if self.left_out:
            log.warning("candidates outside the vocabulary are left out: %s", ", ".join(self.left_out))
        if config.candidates is not None and not self.candidates:
            raise InputError("none of the candidates is in the model's vocabulary")

    def fill(self, sentences: Iterable[str]) -> Iterator[FillResult]:
        for sentence in sentences:
            yield self._fill_one(sentence)

    def _fill_one(self, sentence: str) -> FillResult:
        left, right = split_at_blank(sentence, self.config.blank)
        tokenizer, config = self.tokenizer, self.config
        if not self._warned_context and tokenizer.encode(left + right).oov:
            log.warning("context words outside the vocabulary become <unk> (first seen in %r)", sentence)
            self._warned_context = True
        directions = self.model.config.readings()
        with torch.inference_mode(), autocast(self.device, config.precision):
            if config.candidates is None:
                fillers = list(range(2, tokenizer.vocab_size))  # every word but <unk> and <eos>
                left_ids, right_ids = tokenizer.encode(left).ids, tokenizer.encode(right).ids
                # right to left, the sentence is the reversed right context, the filler, the reversed left one
                scores = torch.stack([
                    _vocabulary_scores(self.model, tokenizer.eos_id, right_ids[::-1], left_ids[::-1], fillers,
                                       config.batch_size, backward=True) if backward else
                    _vocabulary_scores(self.model, tokenizer.eos_id, left_ids, right_ids, fillers, config.batch_size)
                    for backward in directions]).mean(dim=0)
                texts, left_out = [tokenizer.piece(token_id) for token_id in fillers], []
            else:
                texts, left_out = self.candidates, self.left_out
                lines = [tokenizer.encode(left + text + right).ids + [tokenizer.eos_id] for text in texts]
                scores = torch.stack([self._sentence_logprobs(lines, backward) for backward in directions]).mean(dim=0)
        shares = torch.softmax(scores.double(), dim=0)
        best = torch.topk(scores, min(config.top, len(texts))).indices.tolist()
        fillers_ranked = [Filler(texts[i], float(scores[i]), float(shares[i])) for i in best]
        return FillResult(sentence, fillers_ranked, len(texts), left_out)

    def _sentence_logprobs(self, lines: list[list[int]], backward: bool) -> torch.Tensor:
        """Log-probability (float64) of each whole sentence, read left to right or (``backward``) right to left."""
        score = score_lines_backward if backward else partial(score_token_lines, context="line")
        nll = score(self.model, lines, self.tokenizer.eos_id, batch_size=self.config.batch_size)
        return torch.stack([-part.double().sum() for part in nll])


def fill(config: FillConfig) -> list[FillResult]:
    """The best fillers of each of ``config.sentences``."""
    return list(BlankFiller(config).fill(config.sentences))


def _vocabulary_scores(model: RNNLanguageModel, eos: int, left_ids: list[int], right_ids: list[int],
                       fillers: list[int], batch_size: int, backward: bool = False) -> torch.Tensor:
    """Sentence log-probability (float64) with each single-token filler between ``left_ids`` and ``right_ids``,
    read in that order (``backward``: by the right-to-left stack, the caller passing both sides reversed)."""
    device = model.device
    inputs = torch.tensor([[eos, *left_ids]], device=device)  # (1, L + 1)
    features, hidden = model.features(inputs, backward=backward)  # (1, L + 1, H)
    left_logprob = -model.token_nll(features[0, :-1], inputs[0, 1:]).double().sum()
    filler_logprobs = torch.log_softmax(model.logits(features[0, -1]).float(), dim=-1).double()  # (V,)
    right_targets = torch.tensor([*right_ids, eos], device=device)  # (R + 1,)
    pieces = []
    for start in range(0, len(fillers), batch_size):
        poll_threads()
        chunk = torch.tensor(fillers[start : start + batch_size], device=device)  # (C,)
        rows = len(chunk)
        # each row reads its filler, then the right context, from the state after the left context
        row_inputs = torch.cat([chunk[:, None], right_targets[None, :-1].expand(rows, -1)], dim=1)  # (C, R + 1)
        state = select_rows(hidden, torch.zeros(rows, dtype=torch.long, device=device))
        row_features, _ = model.features(row_inputs, state, backward)  # (C, R + 1, H)
        nll = model.token_nll(row_features.reshape(-1, row_features.shape[-1]),
                              right_targets.repeat(rows)).view(rows, -1)
        pieces.append(filler_logprobs[chunk] - nll.double().sum(dim=1))
    return left_logprob + torch.cat(pieces)

