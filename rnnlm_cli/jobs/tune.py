"""Choosing the adaptations' settings on validation text: a grid per adaptation, the lowest ppl wins.

The adaptations are tuned one after another, each on top of the best of those before it, in the order they act
on a probability: dynamic evaluation first (every learning rate and decay of the grid is one pass over the text
with the weights adapting), then the cache (from that pass's recorded scores and top-layer states, so the whole
window x theta x lambda grid costs no further pass of the model), then the n-gram's weight. The figures are those
``rnnlm eval`` gives with the chosen settings (up to fp32 rounding: eval computes the same sums a window at a time).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from rnnlm_cli.config import CacheSettings, DynamicSettings, TuneConfig
from rnnlm_cli.errors import InputError
from rnnlm_cli.runtime import (
    autocast,
)
from rnnlm_cli.scoring.adapt import (
    AdaptedScorer,
    adapted_precision,
    cache_probabilities,
    mix,
    open_ngram,
    rms_statistics,
)
from rnnlm_cli.scoring.inference import load_model
from rnnlm_cli.textio import display_name, iter_lines


@dataclass
class Trial:
    adaptation: str  # static | dynamic | cache | ngram
    settings: dict[str, Any]  # this adaptation's settings (empty for static)
    ppl: float  # with this setting and the best of the adaptations tuned before it

    def to_dict(self) -> dict[str, Any]:
        return {"adaptation": self.adaptation, **self.settings, "ppl": self.ppl}


@dataclass
class TuneResult:
    checkpoint: str
    text: str
    context: str
    precision: str
    lines: int
    tokens: int
    static_ppl: float
    trials: list[Trial] = field(default_factory=list)
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # adaptation -> its chosen settings
    ppl: float = math.nan  # with every chosen setting
    dynamic_data: str | None = None  # the --dynamic-data the rms statistics came from, if given

    def options(self) -> str:
        """The chosen settings as `rnnlm eval` options."""
        parts = []
        if "dynamic" in self.best:
            dynamic = self.best["dynamic"]
            parts.append(f"--dynamic --dynamic-rule {dynamic['rule']} --dynamic-lr {dynamic['lr']:g} "
                         f"--dynamic-decay {dynamic['decay']:g} --dynamic-segment {dynamic['segment']}"
                         + (f" --dynamic-data {self.dynamic_data}" if self.dynamic_data else ""))
        if "cache" in self.best:
            cache = self.best["cache"]
            parts.append(f"--cache --cache-window {cache['window']} --cache-theta {cache['theta']:g} "
                         f"--cache-lambda {cache['lambda']:g}")
        if "ngram" in self.best:
            parts.append(f"--ngram {self.best['ngram']['model']} --ngram-weight {self.best['ngram']['weight']:g}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "text": self.text, "context": self.context,
                "precision": self.precision, "lines": self.lines, "tokens": self.tokens,
                "static_ppl": self.static_ppl, "ppl": self.ppl, "best": self.best, "eval_options": self.options(),
                "tried": [trial.to_dict() for trial in self.trials]}


def tune(config: TuneConfig, progress: bool = False) -> TuneResult:
    loaded = load_model(config.checkpoint, config.device, config.threads)
    device, model, tokenizer, checkpoint = loaded.device, loaded.model, loaded.tokenizer, loaded.checkpoint
    ngram = open_ngram(config.ngram_settings(), tokenizer) if config.ngram else None
    precision = adapted_precision(config.precision, config.dynamic)
    texts = list(iter_lines(config.text, errors=config.encoding_errors))
    if not texts:
        raise InputError(f"{display_name(config.text)}: no lines to tune on")
    token_lines = [enc.ids + [tokenizer.eos_id] for enc in tokenizer.encode_many(texts)]
    tokens = sum(len(line) for line in token_lines)
    targets = [torch.tensor(line, dtype=torch.long) for line in token_lines]

    def ppl(nll: list[torch.Tensor]) -> float:
        return math.exp(float(sum(float(part.sum()) for part in nll)) / tokens)

    def run(dynamic: DynamicSettings | None, rms) -> list[tuple[torch.Tensor, torch.Tensor]]:
        scorer = AdaptedScorer(model, tokenizer, config.context, dynamic=dynamic, rms=rms,
                               batch_size=config.batch_size, keep_features=True)
        try:
            with autocast(device, precision):
                scorer.score(texts, token_lines)
        finally:
            if scorer.dynamic is not None:
                scorer.dynamic.reset()  # the trained weights again, for the next setting
        return scorer.records

    dynamic_points = [(lr, decay) for lr in config.learning_rates for decay in config.dynamic_decays] \
        if config.dynamic else []
    cache_points = [(w, t) for w in config.cache_windows for t in config.cache_thetas] if config.cache else []
    bar = tqdm(total=1 + len(dynamic_points) + len(cache_points) + (1 if ngram else 0), desc="tuning",
               unit="run", leave=False, file=sys.stderr, disable=None if progress else True)
    with bar:
        records = run(None, None)
        bar.update()
        result = TuneResult(config.checkpoint, display_name(config.text), config.context, precision,
                            len(texts), tokens, ppl([nll for nll, _ in records]))
        result.dynamic_data = config.dynamic_data
        result.trials.append(Trial("static", {}, result.static_ppl))
        best_ppl = result.static_ppl
        if dynamic_points:
            with autocast(device, precision):
                rms = rms_statistics(model, tokenizer, config.dynamic_settings(None, 0.0),
                                     checkpoint.data.get("dataset"))
            for lr, decay in dynamic_points:
                settings = config.dynamic_settings(lr, decay)
                tried = run(settings, rms)
                score = ppl([nll for nll, _ in tried])
                result.trials.append(Trial("dynamic", settings.to_dict(), score))
                if score < best_ppl:
                    best_ppl, records, result.best["dynamic"] = score, tried, settings.to_dict()
                bar.update()
        scores = [nll for nll, _ in records]
        if cache_points:
            chosen = None
            for window, theta in cache_points:
                found = _cache_probabilities(config.context, records, targets, window, theta)
                for lam in config.cache_lambdas:
                    mixed = [mix(nll, log_p, lam, seen) for nll, (log_p, seen) in zip(scores, found)]
                    score = ppl(mixed)
                    settings = CacheSettings(window, theta, lam).to_dict()
                    result.trials.append(Trial("cache", settings, score))
                    if score < best_ppl:
                        best_ppl, chosen, result.best["cache"] = score, mixed, settings
                bar.update()
            scores = chosen or scores
        if ngram is not None:
            log_probs = [torch.from_numpy(ngram.log_probs(tokenizer.surface(text))) for text in texts]
            chosen = None
            for weight in config.ngram_weights:
                score = ppl([mix(nll, log_p, weight) for nll, log_p in zip(scores, log_probs)])
                result.trials.append(Trial("ngram", {"model": config.ngram, "weight": weight}, score))
                if score < best_ppl:
                    best_ppl, chosen = score, weight
            if chosen is not None:
                result.best["ngram"] = {"model": config.ngram, "weight": chosen}
            bar.update()
    result.ppl = best_ppl
    return result


def _cache_probabilities(context: str, records, targets: list[torch.Tensor], window: int, theta: float):
    """Per line: the cache's log-probability of each target and where it held anything, from recorded states."""
    lengths = [len(line) for line in targets]
    if context == "stream":
        states, stream = torch.cat([state for _, state in records]), torch.cat(targets)
        probs, seen = cache_probabilities(states[None], stream[None], states[None], stream[None], window, theta)
        return list(zip(probs[0].double().log().split(lengths), seen[0].split(lengths)))
    found = []
    for (_, state), target in zip(records, targets):
        probs, seen = cache_probabilities(state[None], target[None], state[None], target[None], window, theta)
        found.append((probs[0].double().log(), seen[0]))
    return found
