"""Sampling text from a checkpoint: all samples of a prompt run as one batch.

Randomness comes from an explicit ``torch.Generator`` seeded from the config, so the same seed and
arguments give the same text.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rnnlm_cli.checkpoint import load_for_inference
from rnnlm_cli.config import SampleConfig
from rnnlm_cli.model import RNNLanguageModel
from rnnlm_cli.runtime import resolve_device
from rnnlm_cli.tokenizers import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Sample:
    prompt: str
    text: str  # the prompt followed by its continuation
    tokens: int  # tokens generated, the end-of-sentence token included when it ended the sample
    logprob: float  # natural-log probability of the generated tokens under the model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SampleResult:
    samples: list[Sample]
    tokenizer_kind: str

    @property
    def multiline(self) -> bool:
        """Character models generate line breaks, so one sample may span lines."""
        return self.tokenizer_kind == "char"


def sample(config: SampleConfig) -> SampleResult:
    """``num_samples`` continuations of every prompt, prompts in order."""
    device = resolve_device(config.device)
    model, tokenizer, _ = load_for_inference(config.checkpoint, device)
    stop_at_eos = config.stop_at_eos if config.stop_at_eos is not None else tokenizer.kind != "char"
    generator = torch.Generator(device=device).manual_seed(config.seed)
    samples = []
    for prompt in config.prompts:
        encoded = tokenizer.encode(prompt)
        if encoded.oov:
            log.warning("%d prompt word(s) outside the vocabulary became <unk>: %r", encoded.oov, prompt)
        batch = _generate(model, tokenizer.eos_id, encoded.ids, config, stop_at_eos, generator)
        for new_ids, logprob in batch:
            continuation = _continuation(tokenizer, encoded.ids, new_ids)
            # the tokenizer decides the spacing between prompt and continuation
            head = prompt.rstrip() if continuation[:1].isspace() else prompt
            samples.append(Sample(prompt, head + continuation, len(new_ids), logprob))
    return SampleResult(samples, tokenizer.kind)


def _generate(model: RNNLanguageModel, eos_id: int, prompt_ids: list[int], config: SampleConfig,
              stop_at_eos: bool, generator: torch.Generator) -> list[tuple[list[int], float]]:
    device = model.decoder.weight.device
    count = config.num_samples
    context = torch.tensor([[eos_id, *prompt_ids]], device=device).expand(count, -1)  # (N, L)
    finished = torch.zeros(count, dtype=torch.bool, device=device)
    lengths = torch.zeros(count, dtype=torch.long, device=device)
    logprobs = torch.zeros(count, dtype=torch.float64, device=device)
    steps = []
    with torch.inference_mode():
        features, hidden = model.features(context)  # (N, L, H)
        next_logits = model.decoder(features[:, -1])  # (N, V)
        for _ in range(config.max_tokens):
            log_probs = F.log_softmax(next_logits.float(), dim=-1)
            token = _choose(log_probs, config.temperature, config.top_k, generator)  # (N,)
            token = torch.where(finished, torch.full_like(token, eos_id), token)
            logprobs += torch.where(finished, 0.0, log_probs.gather(1, token[:, None])[:, 0].double())
            lengths += (~finished).long()
            steps.append(token)
            if stop_at_eos:
                finished |= token == eos_id
                if bool(finished.all()):
                    break
            logits, hidden = model(token[:, None], hidden)
            next_logits = logits[:, -1]
    generated = torch.stack(steps, dim=1).cpu().tolist()  # (N, steps)
    return [(row[:length], float(lp)) for row, length, lp in zip(generated, lengths.tolist(), logprobs.tolist())]


def _choose(log_probs: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> torch.Tensor:
    if temperature == 0 or top_k == 1:
        return log_probs.argmax(dim=-1)
    scores = log_probs / temperature
    if top_k > 0 and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator)[:, 0]


def _continuation(tokenizer: Tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text the new tokens add after the prompt (spacing decided by the tokenizer)."""
    body = new_ids[:-1] if new_ids and new_ids[-1] == tokenizer.eos_id else new_ids
    head = tokenizer.decode(prompt_ids)
    full = tokenizer.decode([*prompt_ids, *body])
    return full[len(head):] if full.startswith(head) else tokenizer.decode(body)
