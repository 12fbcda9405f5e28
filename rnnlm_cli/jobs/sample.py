"""Generation from a checkpoint: sampling (temperature, top-k, top-p), greedy decoding and beam search.

Every sample of a call runs in one batch (up to ``SampleConfig.batch_size`` rows): the prompts are read
together, packed, and then all rows advance one token per model call. Randomness comes from an explicit
``torch.Generator`` seeded from the config, so the same seed and arguments give the same text; without a seed,
one is drawn for the call and kept in ``Generator.seed``.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F

from rnnlm_cli.config import SampleConfig
from rnnlm_cli.errors import InputError
from rnnlm_cli.model import Hidden, RNNLanguageModel, select_rows
from rnnlm_cli.runtime import poll_threads
from rnnlm_cli.scoring.inference import load_model
from rnnlm_cli.tokenizers import Tokenizer

log = logging.getLogger(__name__)

# Called as samples grow: (index of the sample in output order, its text so far, whether it is complete).
# Each text extends the one before for the same sample.
TextCallback = Callable[[int, str, bool], None]


@dataclass
class Sample:
    prompt: str
    text: str  # the prompt followed by its continuation
    tokens: int  # tokens generated, the end-of-sentence token included when it ended the sample
    logprob: float  # natural-log probability of the generated tokens under the model (temperature 1)
    ids: list[int] = field(default_factory=list, repr=False)  # the generated token ids (not in JSON)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        del values["ids"]
        return values


@dataclass
class SampleResult:
    samples: list[Sample]
    tokenizer_kind: str
    seed: int  # of the random numbers: the one given, or the one drawn for this call

    @property
    def multiline(self) -> bool:
        return multiline(self.tokenizer_kind)


def multiline(tokenizer_kind: str) -> bool:
    """Character models generate line breaks, so one of their samples may span lines."""
    return tokenizer_kind == "char"


class Generator:
    """A loaded checkpoint that generates: ``Generator(config).samples(prompts)``."""

    def __init__(self, config: SampleConfig) -> None:
        self.config = config
        loaded = load_model(config.checkpoint, config.device, config.threads)
        self.device, self.model, self.tokenizer = loaded.device, loaded.model, loaded.tokenizer
        if self.model.config.direction == "backward":
            raise InputError(f"{config.checkpoint}: a backward model reads right to left and cannot continue a "
                             "prompt; sample from a forward or a bidirectional (--direction both) model")
        default_stop = self.tokenizer.kind != "char"  # a character model's <eos> is just a line break
        self.stop_at_eos = default_stop if config.stop_at_eos is None else config.stop_at_eos
        # without a seed each call samples anew; the seed drawn is kept, so that the call can be repeated
        self.seed = secrets.randbelow(2**31) if config.seed is None else config.seed
        self.random = torch.Generator(device=self.device).manual_seed(self.seed)
        self.constraint = utf8_constraint(self.tokenizer, self.device)  # byte pieces kept to valid UTF-8
        self._warned_oov = False

    @property
    def per_prompt(self) -> int:
        return self.config.beam_size or self.config.num_samples

    def samples(self, prompts: Iterable[str], on_text: TextCallback | None = None) -> Iterator[Sample]:
        """Samples of every prompt in order (``per_prompt`` each), a batch of prompts at a time."""
        prompts_per_batch = max(1, self.config.batch_size // self.per_prompt)
        prompts = iter(prompts)
        first_index = 0
        while chunk := list(islice(prompts, prompts_per_batch)):
            batch = self._batch(chunk, first_index, on_text)
            yield from batch
            first_index += len(batch)

    def _batch(self, prompts: list[str], first_index: int, on_text: TextCallback | None) -> list[Sample]:
        tokenizer, config = self.tokenizer, self.config
        encoded = [tokenizer.encode(prompt) for prompt in prompts]
        if not self._warned_oov and (unknown := next((p for p, e in zip(prompts, encoded) if e.oov), None)):
            log.warning("prompt words outside the vocabulary become <unk> (first seen in %r)", unknown)
            self._warned_oov = True
        prompt_ids = [e.ids for e in encoded]
        row_prompts = [index for index in range(len(prompts)) for _ in range(self.per_prompt)]

        def text_of(prompt: int, new_ids: list[int]) -> str:
            return sample_text(tokenizer, prompts[prompt], prompt_ids[prompt], new_ids)

        with torch.inference_mode():
            logits, hidden = _prompt_states(self.model, tokenizer.eos_id, prompt_ids, self.per_prompt)
            if config.beam_size:
                beams = _beam_search(self.model, tokenizer.eos_id, logits, hidden, config.beam_size,
                                     config.max_tokens, self.stop_at_eos, self.constraint)
                rows = [(prompt, *hypothesis) for prompt, best in enumerate(beams) for hypothesis in best]
            else:
                watcher = None
                if on_text is not None:
                    watcher = _TextWatcher(lambda row, ids: text_of(row_prompts[row], ids), first_index, on_text)
                generated = _sample(self.model, tokenizer.eos_id, logits, hidden, config, self.stop_at_eos,
                                    self.random, watcher, self.constraint)
                rows = [(prompt, *row) for prompt, row in zip(row_prompts, generated)]
        samples = [Sample(prompts[prompt], text_of(prompt, ids), len(ids), logprob, ids)
                   for prompt, ids, logprob in rows]
        if on_text is not None and config.beam_size:  # beams change until the end: they are shown complete
            for offset, item in enumerate(samples):
                on_text(first_index + offset, item.text, True)
        return samples


def sample(config: SampleConfig) -> SampleResult:
    """``num_samples`` continuations (or ``beam_size`` best ones) of every prompt, prompts in order."""
    generator = Generator(config)
    return SampleResult(list(generator.samples(config.prompts)), generator.tokenizer.kind, generator.seed)


def sample_text(tokenizer: Tokenizer, prompt: str, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The prompt as typed, followed by the text the new tokens add (spacing decided by the tokenizer)."""
    body = new_ids[:-1] if new_ids and new_ids[-1] == tokenizer.eos_id else new_ids
    head = tokenizer.decode(prompt_ids)
    full = tokenizer.decode([*prompt_ids, *body])
    continuation = full[len(head):] if full.startswith(head) else tokenizer.decode(body)
    return (prompt.rstrip() if continuation[:1].isspace() else prompt) + continuation


def choose_tokens(log_probs: torch.Tensor, config: SampleConfig, generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``log_probs`` (R, V): temperature first, then the top-k cut, then the top-p cut."""
    if config.is_greedy:
        return log_probs.argmax(dim=-1)
    scores = log_probs / config.temperature
    if 0 < config.top_k < scores.shape[-1]:
        kth = torch.topk(scores, config.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if config.top_p < 1:
        ordered, order = scores.sort(dim=-1, descending=True)
        probabilities = torch.softmax(ordered, dim=-1)
        # drop a token when the more likely ones already reach top_p; the most likely one always stays
        drop_ordered = probabilities.cumsum(dim=-1) - probabilities >= config.top_p
        drop = torch.zeros_like(drop_ordered).scatter(-1, order, drop_ordered)
        scores = scores.masked_fill(drop, -math.inf)
    # inverse-CDF sampling: one uniform number per row (torch.multinomial is several times slower on CPUs)
    cumulative = torch.softmax(scores, dim=-1).cumsum(dim=-1)  # (R, V)
    uniform = torch.rand(cumulative.shape[0], 1, generator=generator, device=scores.device)
    token = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)[:, 0]
    return token.clamp_(max=scores.shape[-1] - 1)


def _prompt_states(model: RNNLanguageModel, eos_id: int, prompts: list[list[int]],
                   repeat: int) -> tuple[torch.Tensor, Hidden]:
    """Next-token logits (R, V) and hidden state after each prompt, each prompt's row repeated ``repeat`` times.

    Every prompt is read after ``<eos>``, as a line is; prompts of different lengths run as one packed batch.
    """
    device = model.device
    lengths = torch.tensor([1 + len(ids) for ids in prompts])
    padded = torch.full((len(prompts), int(lengths.max())), eos_id, dtype=torch.long)  # (P, T)
    for row, ids in enumerate(prompts):
        padded[row, 1 : 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
    top, hidden = model.last_states(padded.to(device), lengths)  # (P, H)
    rows = torch.arange(len(prompts), device=device).repeat_interleave(repeat)
    return model.logits(top).index_select(0, rows), select_rows(hidden, rows)


# UTF-8 (RFC 3629): what a byte may be at the start of a character, and the range of the byte after a lead byte
# (the later continuation bytes are 0x80-0xBF). Overlong forms (C0, C1, E0 80-9F, F0 80-8F), surrogates (ED A0-BF)
# and code points above U+10FFFF (F4 90-BF, F5-FF) are never valid.
_CONTINUATION = (0x80, 0xBF)


def _utf8_lead(byte: int) -> tuple[int, tuple[int, int]] | None:
    """For a byte that starts a character: the continuation bytes it needs and the first one's range; else None."""
    if byte < 0x80:
        return 0, _CONTINUATION
    if 0xC2 <= byte <= 0xDF:
        return 1, _CONTINUATION
    if 0xE0 <= byte <= 0xEF:
        return 2, {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F)}.get(byte, _CONTINUATION)
    if 0xF0 <= byte <= 0xF4:
        return 3, {0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(byte, _CONTINUATION)
    return None


class Utf8Constraint:
    """Keeps the byte pieces of a byte-fallback tokenizer to valid UTF-8, row by row.

    Each row is either between characters or inside one, waiting for a number of continuation bytes in a known
    range. Between characters, any piece that is not a byte may come, and so may a byte that is a character on its
    own or a lead byte whose character fits in the tokens left (so no row ends inside a character, at the length
    limit or at the end of sentence, which only comes between characters). Inside a character, only the
    continuation bytes that can come next are allowed.
    """

    def __init__(self, byte_values: list[int], device: torch.device) -> None:
        values = torch.tensor(byte_values, device=device)
        self.byte_of = byte_values
        self.not_byte = values < 0
        # by_lead[k]: the bytes that start a character of k more bytes
        self.by_lead = [torch.zeros_like(self.not_byte) for _ in range(4)]
        for token, byte in enumerate(byte_values):
            if byte >= 0 and (lead := _utf8_lead(byte)) is not None:
                self.by_lead[lead[0]][token] = True
        self.ranges: dict[tuple[int, int], torch.Tensor] = {}
        for low, high in {_CONTINUATION, (0xA0, 0xBF), (0x80, 0x9F), (0x90, 0xBF), (0x80, 0x8F)}:
            self.ranges[(low, high)] = (values >= low) & (values <= high)

    def start(self, rows: int) -> list[tuple[int, tuple[int, int]]]:
        """Every row between characters: (continuation bytes still due, the next one's range)."""
        return [(0, _CONTINUATION)] * rows

    def allowed(self, states: list[tuple[int, tuple[int, int]]], tokens_left: int) -> torch.Tensor:
        """(R, V) booleans: the pieces each row may take next, with ``tokens_left`` tokens left (this one included)."""
        between = self.not_byte | self.by_lead[0]
        for extra in range(1, min(3, tokens_left - 1) + 1):
            between = between | self.by_lead[extra]
        return torch.stack([between if due == 0 else self.ranges[span] for due, span in states])

    def advance(self, state: tuple[int, tuple[int, int]], token: int) -> tuple[int, tuple[int, int]]:
        """A row's state after it took ``token``."""
        byte = self.byte_of[token]
        if byte < 0:
            return 0, _CONTINUATION
        if state[0]:
            return state[0] - 1, _CONTINUATION
        return _utf8_lead(byte) or (0, _CONTINUATION)


def utf8_constraint(tokenizer: Tokenizer, device: torch.device) -> Utf8Constraint | None:
    """The constraint for ``tokenizer``'s byte pieces, or None when it has none."""
    values = tokenizer.byte_values()
    return None if values is None else Utf8Constraint(values, device)


class _TextWatcher:
    """Reports each growing sample's text to a callback, holding back an unfinished multi-byte character."""

    def __init__(self, text_of: Callable[[int, list[int]], str], first_index: int, callback: TextCallback):
        self.text_of, self.first_index, self.callback = text_of, first_index, callback
        self.shown: dict[int, str] = {}
        self.closed: set[int] = set()

    def __call__(self, histories: list[list[int]], finished: list[bool], last_step: bool) -> None:
        for row, ids in enumerate(histories):
            if row in self.closed:
                continue
            done = finished[row] or last_step
            text = self.text_of(row, ids)
            if not done:
                # sentencepiece renders a character's first bytes as U+FFFD until the rest arrive
                text = text.rstrip("\ufffd")
            if done or (text != self.shown.get(row) and ids):
                self.shown[row] = text
                self.callback(self.first_index + row, text, done)
            if done:
                self.closed.add(row)


def _sample(model: RNNLanguageModel, eos_id: int, logits: torch.Tensor, hidden: Hidden, config: SampleConfig,
            stop_at_eos: bool, generator: torch.Generator,
            watcher: _TextWatcher | None, constraint: Utf8Constraint | None = None) -> list[tuple[list[int], float]]:
    """Sample every row together: (new token ids, their total log-probability under the model) per row.

    With a ``constraint`` the choice is among the pieces it allows, their probabilities renormalised (sampling
    from the model given that the text stays valid UTF-8); the log-probability counted is still the model's own.
    """
    rows = logits.shape[0]
    finished = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    logprobs = torch.zeros(rows, dtype=torch.float64, device=logits.device)
    histories: list[list[int]] = [[] for _ in range(rows)]
    states = constraint.start(rows) if constraint is not None else []
    for step in range(config.max_tokens):
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (R, V)
        choice = log_probs
        if constraint is not None:
            choice = log_probs.masked_fill(~constraint.allowed(states, config.max_tokens - step), -math.inf)
            choice = choice - choice.logsumexp(dim=-1, keepdim=True)
        token = choose_tokens(choice, config, generator)  # (R,)
        if constraint is not None:
            states = [constraint.advance(state, token_id) for state, token_id in zip(states, token.tolist())]
        logprobs += torch.where(finished, 0.0, log_probs.gather(1, token[:, None])[:, 0].double())
        done_before = finished.tolist()
        for row, token_id in enumerate(token.tolist()):
            if not done_before[row]:
                histories[row].append(token_id)
        if stop_at_eos:
            finished |= token == eos_id
        all_done = bool(finished.all())
        if watcher is not None:
            watcher(histories, finished.tolist(), step == config.max_tokens - 1 or all_done)
        if all_done:
            break
        poll_threads()
        output, hidden = model(token[:, None], hidden)
        logits = output[:, -1]
    return [(ids, float(lp)) for ids, lp in zip(histories, logprobs.tolist())]


def _beam_search(model: RNNLanguageModel, eos_id: int, logits: torch.Tensor, hidden: Hidden, beam: int,
                 max_tokens: int, stop_at_eos: bool, constraint: Utf8Constraint | None = None
                 ) -> list[list[tuple[list[int], float]]]:
    """For each prompt, its ``beam`` most probable continuations, best first, as (token ids, log-probability).

    ``logits`` and ``hidden`` hold ``beam`` identical rows per prompt. Scores are plain sums of log-probabilities
    (no length normalisation). A hypothesis that predicts ``<eos>`` is complete (with ``stop_at_eos``); a prompt is
    done once it has ``beam`` complete ones that all score at least its best open one, since scores only fall as
    hypotheses grow. Open hypotheses still running at ``max_tokens`` compete with the complete ones. A
    ``constraint`` rules out the continuations that would not be valid UTF-8 (scores stay the model's).
    """
    device = logits.device
    vocab_size = logits.shape[-1]
    prompts = logits.shape[0] // beam
    scores = torch.full((prompts, beam), -math.inf, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # the copies are identical: start from one of them
    histories: list[list[list[int]]] = [[[] for _ in range(beam)] for _ in range(prompts)]
    complete: list[list[tuple[list[int], float]]] = [[] for _ in range(prompts)]
    done = [False] * prompts
    states = constraint.start(prompts * beam) if constraint is not None else []
    for step in range(max_tokens):
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if constraint is not None:
            log_probs = log_probs.masked_fill(~constraint.allowed(states, max_tokens - step), -math.inf)
        log_probs = log_probs.double().view(prompts, beam, vocab_size)
        candidates = (scores[:, :, None] + log_probs).view(prompts, beam * vocab_size)
        top_scores, top_index = candidates.topk(min(2 * beam, beam * vocab_size), dim=-1)  # (P, 2K)
        next_scores = torch.full((prompts, beam), -math.inf, dtype=torch.float64)
        sources = torch.zeros((prompts, beam), dtype=torch.long)
        tokens = torch.full((prompts, beam), eos_id, dtype=torch.long)
        next_states = list(states)
        for prompt, (row_scores, row_index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            if done[prompt]:
                continue
            live: list[list[int]] = []
            for score, index in zip(row_scores, row_index):
                if score == -math.inf or len(live) == beam:
                    break
                source, token = divmod(index, vocab_size)
                ids = [*histories[prompt][source], token]
                if stop_at_eos and token == eos_id:
                    complete[prompt].append((ids, score))
                    continue
                next_scores[prompt, len(live)], sources[prompt, len(live)] = score, source
                tokens[prompt, len(live)] = token
                if constraint is not None:
                    next_states[prompt * beam + len(live)] = constraint.advance(states[prompt * beam + source], token)
                live.append(ids)
            histories[prompt] = live + [[] for _ in range(beam - len(live))]
            finished_scores = sorted((score for _, score in complete[prompt]), reverse=True)
            if len(finished_scores) >= beam and (not live or next_scores[prompt, 0] <= finished_scores[beam - 1]):
                done[prompt] = True
                next_scores[prompt] = -math.inf
        scores, states = next_scores.to(device), next_states
        if all(done):
            break
        rows = (torch.arange(prompts)[:, None] * beam + sources).view(-1).to(device)
        poll_threads()
        output, hidden = model(tokens.view(-1, 1).to(device), select_rows(hidden, rows))
        logits = output[:, -1]
    results = []
    for prompt in range(prompts):
        pool = complete[prompt] + [(ids, score) for ids, score in zip(histories[prompt], scores[prompt].tolist())
                                   if score > -math.inf]
        pool.sort(key=lambda item: item[1], reverse=True)
        results.append(pool[:beam])
    return results
