"""Rescoring n-best lists: each hypothesis scored by the model, combined with the list's own scores, reranked;
with references, word error rates and weights tuned by them.

Every hypothesis gets the model's log-probability of its tokens and of the end of sentence after them, in the
list's units (``log10`` as SRILM and Mikolov's rnnlm write scores, ``ln`` as Kaldi's costs and most Python
pipelines). Context:

- ``line``: every hypothesis from a fresh state, as SRILM and KenLM score sentences;
- ``utterance``: every hypothesis of an utterance from the state after the previous utterance's first hypothesis
  (the recogniser's best), in the order the list gives the utterances, as Kaldi's and Mikolov's rescoring do.
  The first utterance starts from a fresh state.

Hypotheses are scored in a prefix tree (``scoring.score_prefix_tree``): a prefix that several hypotheses share
is read once, and so is a hypothesis that repeats. With ``line`` context every hypothesis of a window of
utterances shares the one fresh state, so the tree spans utterances.

The weights (``RescoreWeights``) combine, per hypothesis: the list's scores, the model's, the number of words,
of out-of-vocabulary words (a word model scores them as ``<unk>``, a class of words, so its probability is no
word's) and the rank the list gave it. Ties keep the list's order. WER comes from jiwer: per hypothesis, the
substitutions, deletions and insertions against its utterance's reference; a corpus's WER is their sum over
the chosen hypotheses divided by the reference words, which is what jiwer computes for the whole set, so tuning
the weights needs no realignment.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rnnlm_cli.config import RescoreConfig, RescoreWeights
from rnnlm_cli.errors import CheckpointError, ConfigError, InputError
from rnnlm_cli.model import RNNLanguageModel
from rnnlm_cli.nbest import (
    DEFAULT_UNITS,
    NbestList,
    WordMap,
    attach_costs,
    read_nbest,
    read_refs,
)
from rnnlm_cli.runtime import (
    autocast,
    poll_threads,
)
from rnnlm_cli.scoring import score_prefix_tree
from rnnlm_cli.scoring.adapt import mix, open_ngram
from rnnlm_cli.scoring.inference import load_model
from rnnlm_cli.textio import display_name

log = logging.getLogger(__name__)

LN10 = math.log(10)
WINDOW_UTTERANCES = 2000  # utterances scored together (one prefix tree); bounds memory on long lists
# rnnlm rescore --tune's grids. The LM weight's is geometric around the ratio of the spreads of the list's scores
# and the model's within an utterance (the weight at which both move a total alike); the others are per unit of LM
# weight, in nats (divided by ln 10 in log10 units): a word or an OOV word is worth a few nats.
TUNE_LM_STEPS = tuple(2 ** (step / 2) for step in range(-8, 9))
TUNE_WORD_NATS = tuple(step / 2 for step in range(-16, 17))
TUNE_OOV_NATS = tuple(float(step) for step in range(-20, 5))
TUNE_RANK_NATS = (0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0, -16.0, -24.0)
TUNE_POINTS_AT_ONCE = 256


@dataclass
class RescoreResult:
    """Every hypothesis of a list with its features, flat in list order (``offsets`` mark the utterances)."""

    checkpoint: str
    context: str
    precision: str
    units: str
    nbest: NbestList
    lm: np.ndarray  # the model's log-probability (in units), the n-gram mixed in when asked
    tokens: np.ndarray  # the model's tokens, end of sentence included
    words: np.ndarray  # whitespace words of the list's text
    oov: np.ndarray  # words outside the model's vocabulary (of the text it read: after the word map)
    scores: np.ndarray  # (hypotheses, columns): the list's own scores
    rank: np.ndarray  # position within its utterance, 0 first
    offsets: np.ndarray  # utterance u holds hypotheses offsets[u] .. offsets[u + 1] - 1
    ngram: dict[str, Any] | None = None  # the n-gram mixed in: model, order, weight

    @property
    def hypotheses(self) -> int:
        return len(self.lm)

    def features(self, weights: RescoreWeights) -> np.ndarray:
        """(hypotheses, 5): the list's weighted scores, lm, words, OOV words, rank; a total is their dot product
        with (1, lm_weight, word_penalty, oov_penalty, rank_weight)."""
        other = self.scores @ np.asarray(weights.columns(self.scores.shape[1]), dtype=np.float64) \
            if self.scores.shape[1] else np.zeros(self.hypotheses)
        return np.stack([other, self.lm, self.words, self.oov, self.rank], axis=1).astype(np.float64)

    def totals(self, weights: RescoreWeights) -> np.ndarray:
        return self.features(weights) @ _vector(weights)

    def orders(self, weights: RescoreWeights) -> list[list[int]]:
        """Each utterance's hypotheses (indices within it), best total first; ties keep the list's order."""
        totals = self.totals(weights)
        return [sorted(range(stop - start), key=lambda i, base=start: -totals[base + i])
                for start, stop in zip(self.offsets[:-1], self.offsets[1:])]


def _vector(weights: RescoreWeights) -> np.ndarray:
    return np.array([1.0, weights.lm_weight, weights.word_penalty, weights.oov_penalty, weights.rank_weight])


def rescore(config: RescoreConfig, progress: bool = False) -> RescoreResult:
    """Read the list of ``config`` and score every hypothesis with the checkpoint."""
    nbest = read_nbest(config.nbest, config.format)
    attach_costs(nbest, config.costs)
    config.weights.columns(len(nbest.score_names))  # a wrong number of --score-weight: before the model loads
    word_map = WordMap(config.word_map) if config.word_map is not None else None
    loaded = load_model(config.checkpoint, config.device, config.threads)
    device, model, tokenizer = loaded.device, loaded.model, loaded.tokenizer
    if model.config.direction == "backward":
        raise ConfigError("rescoring reads hypotheses left to right, and this model reads right to left only; use a "
                          "forward model (or a biLM, whose forward direction scores)")
    ngram = open_ngram(config.ngram, tokenizer) if config.ngram is not None else None
    units = config.units or DEFAULT_UNITS[nbest.format]
    per_unit = LN10 if units == "log10" else 1.0
    hyps = [hyp for utterance in nbest.utterances for hyp in utterance.hyps]
    texts = [word_map.apply(hyp.text) if word_map else hyp.text for hyp in hyps]  # what the model reads
    encoded = tokenizer.encode_many(texts)
    lines = [enc.ids + [tokenizer.eos_id] for enc in encoded]
    sizes = [len(utterance.hyps) for utterance in nbest.utterances]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    lm = np.empty(len(hyps))
    carried = None  # utterance context: the state after the last window's last first hypothesis
    bar = tqdm(total=len(hyps), desc="rescoring", unit="hyp", leave=False, file=sys.stderr,
               disable=None if progress else True)
    with bar, autocast(device, config.precision):
        for first in range(0, len(sizes), WINDOW_UTTERANCES):
            last = min(len(sizes), first + WINDOW_UTTERANCES)
            start, stop = int(offsets[first]), int(offsets[last])
            window = lines[start:stop]
            if config.context == "utterance":
                roots = [u - first for u in range(first, last) for _ in range(sizes[u])]
                root_states, carried = _utterance_states(model, [lines[int(offsets[u])] for u in range(first, last)],
                                                         tokenizer.eos_id, carried)
            else:
                roots, root_states = [0] * len(window), None
            nll = score_prefix_tree(model, window, roots, root_states, tokenizer.eos_id, config.batch_size)
            for index, scores in enumerate(nll, start=start):
                scores = scores.double()
                if ngram is not None:
                    log_probs = torch.from_numpy(ngram.log_probs(tokenizer.surface(texts[index])))
                    scores = mix(scores, log_probs, config.ngram.weight)
                lm[index] = -float(scores.sum()) / per_unit
                if not math.isfinite(lm[index]):
                    hyp = hyps[index]
                    raise CheckpointError(f"{config.checkpoint}: the model scores the hypothesis on line {hyp.line} "
                                          f"of {display_name(config.nbest)} as {lm[index]} (its weights are broken)")
            bar.update(stop - start)
    width = len(nbest.score_names)
    scores = np.array([hyp.scores for hyp in hyps], dtype=np.float64).reshape(len(hyps), width)
    return RescoreResult(
        config.checkpoint, config.context, config.precision, units, nbest, lm,
        tokens=np.array([len(line) for line in lines]), words=np.array([len(hyp.text.split()) for hyp in hyps]),
        oov=np.array([enc.oov for enc in encoded]) if tokenizer.kind == "word" else np.zeros(len(hyps), int),
        scores=scores, rank=np.concatenate([np.arange(size) for size in sizes]) if sizes else np.zeros(0),
        offsets=offsets,
        ngram=None if ngram is None else {"model": ngram.path, "order": ngram.order, "weight": config.ngram.weight})


def _utterance_states(model: RNNLanguageModel, firsts: list[list[int]], eos_id: int, hidden):
    """The state each utterance starts from (one batch row each) and the state after the last one's first
    hypothesis: each first hypothesis read in turn, the state carried, as ``rnnlm eval --context stream`` reads
    lines."""
    rows = []
    with torch.inference_mode():
        for line in firsts:
            poll_threads()
            rows.append(hidden if hidden is not None else model.init_hidden(1))
            inputs = torch.tensor([[eos_id, *line[:-1]]], device=model.device)
            _, hidden = model.features(inputs, hidden)
    if isinstance(rows[0], tuple):
        return tuple(torch.cat([row[part] for row in rows], dim=1) for part in range(2)), hidden
    return torch.cat(rows, dim=1), hidden


# ----------------------------------------------------------------------------------------------- word error rate


@dataclass
class WerRow:
    name: str  # first | rescored | oracle
    errors: int
    words: int

    @property
    def wer(self) -> float:
        return 100.0 * self.errors / self.words if self.words else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "errors": self.errors, "ref_words": self.words, "wer": self.wer}


@dataclass
class References:
    """Each hypothesis's word errors against its utterance's reference (utterances without one left out)."""

    errors: np.ndarray  # per hypothesis
    words: np.ndarray  # per utterance: reference words (0 where there is no reference)
    have: np.ndarray  # per utterance: whether it has a reference
    missing: int  # utterances without a reference

    def rows(self, result: RescoreResult, weights: RescoreWeights) -> list[WerRow]:
        """WER of the list's first hypotheses, of the rescored best and of the best possible (the oracle)."""
        starts = result.offsets[:-1]
        chosen = starts + np.array([order[0] if order else 0 for order in result.orders(weights)], dtype=np.int64)
        oracle = np.minimum.reduceat(self.errors, starts) if len(starts) else np.zeros(0)
        words = int(self.words.sum())
        return [WerRow("first", int(self.errors[starts][self.have].sum()), words),
                WerRow("rescored", int(self.errors[chosen][self.have].sum()), words),
                WerRow("oracle", int(oracle[self.have].sum()), words)]


def references(result: RescoreResult, refs_path: str | None) -> References:
    """The references of ``result``'s utterances, from ``refs_path`` (``uttid text`` lines) or the list's own."""
    try:
        import jiwer
    except ImportError:
        raise ConfigError("word error rates are computed with the jiwer module, which is not installed: "
                          "pip install 'rnnlm-cli[wer]'") from None
    utterances = result.nbest.utterances
    if refs_path is not None:
        refs = read_refs(refs_path)
        texts = [refs.get(utterance.id) for utterance in utterances]
        source = refs_path
    else:
        texts = [utterance.ref for utterance in utterances]
        source = "the list"
    have = np.array([text is not None for text in texts], dtype=bool)
    if not have.any():
        sample = ", ".join(repr(utterance.id) for utterance in utterances[:3])
        raise InputError(f"{source} gives no reference for any utterance of the list (whose IDs are {sample}, ...); "
                         f"give --refs FILE with `uttid words` lines" if refs_path is not None else
                         'the list has no "ref" fields: give the references with --refs FILE (`uttid words` lines)')
    missing = int((~have).sum())
    if missing:
        log.warning("%d of %d utterances have no reference in %s and are left out of the word error rates",
                    missing, len(utterances), source)
    errors = np.zeros(result.hypotheses, dtype=np.int64)
    pairs = [(index, text, hyp.text) for u, (utterance, text) in enumerate(zip(utterances, texts)) if text
             for index, hyp in enumerate(utterance.hyps, start=int(result.offsets[u]))]
    for u, (utterance, text) in enumerate(zip(utterances, texts)):
        if text == "":  # jiwer needs a reference with words: with none, every hypothesis word is an insertion
            errors[result.offsets[u] : result.offsets[u + 1]] = [len(hyp.text.split()) for hyp in utterance.hyps]
    aligned = [(index, ref, hyp) for index, ref, hyp in pairs if hyp]
    for index, ref, hyp in pairs:
        if not hyp:
            errors[index] = len(ref.split())
    if aligned:
        output = jiwer.process_words([ref for _, ref, _ in aligned], [hyp for _, _, hyp in aligned])
        for (index, _, _), chunks in zip(aligned, output.alignments):
            errors[index] = sum(chunk.hyp_end_idx - chunk.hyp_start_idx if chunk.type == "insert"
                                else chunk.ref_end_idx - chunk.ref_start_idx
                                for chunk in chunks if chunk.type != "equal")
    words = np.array([len(text.split()) if text else 0 for text in texts], dtype=np.int64)
    return References(errors, words, have, missing)


# ------------------------------------------------------------------------------------------------------ tuning


@dataclass
class TuneOutcome:
    weights: RescoreWeights  # the best found
    rows: list[WerRow]  # first, rescored with the weights found, oracle
    tuned: tuple[str, ...]  # the weights searched (the others held at their given values)
    points: int  # weight settings tried
    by_value: list[tuple[float, float, RescoreWeights]] = field(default_factory=list)  # primary value, best WER, at

    @property
    def primary(self) -> str:
        return self.tuned[0] if self.tuned else "lm_weight"


def tune_weights(result: RescoreResult, refs: References, base: RescoreWeights,
                 fixed: frozenset[str] = frozenset()) -> TuneOutcome:
    """The weights with the lowest WER on ``result``'s utterances, searched on a grid. Those in ``fixed`` keep
    ``base``'s values, and so does the LM weight of a list without scores of its own (only its ratio to the other
    weights counts there); the rank weight is searched only there. The word, OOV and rank weights are searched per
    unit of LM weight (the rank weight at 0 or below: a positive one would favour the list's later hypotheses). A
    grid whose best lies on its edge is extended past it (up to EXTENSIONS times). Of several
    settings with the lowest WER, the one nearest the middle of them is taken."""
    features = result.features(base)
    has_scores = bool(np.any(features[:, 0] != features[0, 0])) if len(features) else False
    unit = 1.0 if result.units == "ln" else 1 / LN10
    scale = _lm_scale(result, features) if has_scores else 1.0
    axes: dict[str, _Axis] = {}
    if "lm_weight" not in fixed and has_scores:
        axes["lm_weight"] = _Axis([0.0, *(scale * step for step in TUNE_LM_STEPS)], geometric=True)
    if "word_penalty" not in fixed:
        axes["word_penalty"] = _Axis([nats * unit for nats in TUNE_WORD_NATS])
    if "oov_penalty" not in fixed and result.oov.any():
        axes["oov_penalty"] = _Axis([nats * unit for nats in TUNE_OOV_NATS])
    if "rank_weight" not in fixed and not has_scores:
        axes["rank_weight"] = _Axis([nats * unit for nats in TUNE_RANK_NATS], highest=0.0)
    names = ("lm_weight", "word_penalty", "oov_penalty", "rank_weight")
    errors: dict[tuple[float, ...], int] = {}  # weights -> word errors, over every round
    for _ in range(EXTENSIONS + 1):
        grid = [list(axes[name].values) if name in axes else [None] for name in names]
        points = []
        for lm_weight, *others in itertools.product(*grid):
            lm_weight = base.lm_weight if lm_weight is None else lm_weight
            per = lm_weight if lm_weight > 0 else scale  # the others per unit of LM weight
            points.append((lm_weight, *(getattr(base, name) if value is None else value * per
                                        for name, value in zip(names[1:], others))))
        new = [point for point in points if point not in errors]
        if new:
            errors.update(zip(new, _grid_errors(result, refs, features, np.array(new)).tolist()))
        found = np.array([errors[point] for point in points])
        tied = np.flatnonzero(found == found.min())
        places = np.array(list(itertools.product(*(range(len(values)) for values in grid))), dtype=np.float64)
        middle = int(tied[int(np.argmin(((places[tied] - places[tied].mean(axis=0)) ** 2).sum(axis=1)))])
        spot = dict(zip(names, places[middle].astype(int)))
        grown = [axes[name].extend(spot[name]) for name in axes]  # every axis whose edge holds the best
        if not any(grown):
            break
    weights = _weights(points[middle], base)
    outcome = TuneOutcome(weights, refs.rows(result, weights), tuple(axes), len(errors))
    column = names.index(outcome.primary)
    for value in sorted({point[column] for point in points}):
        at = [index for index, point in enumerate(points) if point[column] == value]
        best = at[int(np.argmin(found[at]))]
        outcome.by_value.append((value, 100.0 * found[best] / max(1, int(refs.words.sum())),
                                 _weights(points[best], base)))
    return outcome


EXTENSIONS = 3  # times a grid whose best lies on an edge grows past it


class _Axis:
    """One weight's grid values, ascending, growing past an edge where the best lies: arithmetic (by its step) or
    geometric (by its ratio), never beyond ``highest``."""

    def __init__(self, values: list[float], geometric: bool = False, highest: float = math.inf) -> None:
        self.values, self.geometric, self.highest = sorted(values), geometric, highest

    def extend(self, index: int) -> bool:
        """Grow past the edge at ``index``, if it is one; whether the grid grew."""
        values, count = self.values, max(1, len(self.values) // 2)
        if len(values) < 2 or 0 < index < len(values) - 1:
            return False
        up = index == len(values) - 1
        if not up and self.geometric and values[0] <= 0:  # nothing below a geometric grid's 0
            return False
        if self.geometric:
            ratio = values[-1] / values[-2]
            more = [values[-1] * ratio**k for k in range(1, count + 1)] if up else \
                [values[0] / ratio**k for k in range(count, 0, -1)]
        else:
            step = values[-1] - values[-2]
            more = [values[-1] + step * k for k in range(1, count + 1)] if up else \
                [values[0] - step * k for k in range(count, 0, -1)]
        more = [value for value in more if value <= self.highest]
        self.values = values + more if up else more + values
        return bool(more)


def _weights(point, base: RescoreWeights) -> RescoreWeights:
    lm_weight, word, oov, rank = (float(value) for value in point)
    return RescoreWeights(lm_weight, word, oov, rank, base.score_weights)


def _lm_scale(result: RescoreResult, features: np.ndarray) -> float:
    """The median spread of the list's scores within an utterance over the median spread of the model's."""
    spreads = []
    for start, stop in zip(result.offsets[:-1], result.offsets[1:]):
        if stop - start > 1:
            other, lm = np.ptp(features[start:stop, 0]), np.ptp(features[start:stop, 1])
            if other > 0 and lm > 0:
                spreads.append(other / lm)
    return float(np.median(spreads)) if spreads else 1.0


def _grid_errors(result: RescoreResult, refs: References, features: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Word errors over the utterances with references of the best hypothesis under each weight setting."""
    sizes = np.diff(result.offsets)
    width = int(sizes.max()) if len(sizes) else 0
    slots = result.offsets[:-1, None] + np.arange(width)[None, :]  # (U, H)
    real = np.arange(width)[None, :] < sizes[:, None]
    slots = np.where(real, slots, 0)
    hypothesis_errors = np.where(real, refs.errors[slots], 0)
    counted = refs.have
    vectors = np.concatenate([np.ones((len(points), 1)), points], axis=1)  # (P, 5)
    found = np.empty(len(points), dtype=np.int64)
    for first in range(0, len(points), TUNE_POINTS_AT_ONCE):
        chunk = vectors[first : first + TUNE_POINTS_AT_ONCE]
        totals = (chunk @ features.T)[:, slots]  # (P, U, H)
        totals[:, ~real] = -np.inf
        best = totals.argmax(axis=2)  # the first of equal totals: ties keep the list's order
        chosen = np.take_along_axis(hypothesis_errors[None], best[:, :, None], axis=2)[:, :, 0]
        found[first : first + len(chunk)] = chosen[:, counted].sum(axis=1)
    return found
