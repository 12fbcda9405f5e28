"""Running a model over token streams and lines: the per-token scores that eval, fill and training's validation
share (one floor below the jobs).

Each line is its token ids with the end-of-sentence id last; the first token of a sequence is predicted after
``<eos>``. ``score_stream`` reads one stream with the state carried, in chunks of ``STREAM_CHUNK`` positions;
``score_token_lines`` reads lines from fresh states, batched longest first and put back in input order.
The adaptations that change these scores (cache, dynamic evaluation, n-gram mix) are in ``rnnlm_cli.adapt``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rnnlm_cli.model import RNNLanguageModel
from rnnlm_cli.runtime import poll_threads

STREAM_CHUNK = 512  # time steps per forward call in stream mode; the state carries between calls


def score_token_lines(
    model: RNNLanguageModel, lines: Sequence[Sequence[int]], eos_id: int, context: str, batch_size: int = 64,
    backward: bool = False,
) -> list[torch.Tensor]:
    """Negative log-likelihood (nats) of every token of every line, in input order.

    Each line holds its token ids with the end-of-sentence id last. ``backward`` scores with a biLM's
    right-to-left stack over lines the caller has reversed (``score_lines_backward`` does both).
    """
    if context == "stream":
        return score_stream_lines(model, lines, eos_id, backward=backward)[0]
    if not lines:
        return []
    model.eval()
    with torch.inference_mode():
        return _score_lines_batched(model, lines, eos_id, batch_size, backward)


def score_lines_backward(model: RNNLanguageModel, lines: Sequence[Sequence[int]], eos_id: int,
                         batch_size: int = 64) -> list[torch.Tensor]:
    """The right-to-left direction's nll of every token of every line, each line read reversed from a fresh state
    (its tokens backwards, then the end of the line, which there stands for "the line starts here"). Scores come
    back in the line's own token order, the line-start score in the end-of-sentence place."""
    reversed_lines = [[*reversed(line[:-1]), line[-1]] for line in lines]
    scores = score_token_lines(model, reversed_lines, eos_id, "line", batch_size, backward=True)
    return [torch.cat([nll[:-1].flip(0), nll[-1:]]) for nll in scores]


def score_stream_lines(model: RNNLanguageModel, lines: Sequence[Sequence[int]], eos_id: int, hidden=None,
                       backward: bool = False):
    """Per-line nll of consecutive lines read as one stream, and the state after the last line."""
    if not lines:
        return [], hidden
    stream = torch.tensor([token for line in lines for token in line], dtype=torch.long)
    nll, hidden = score_stream(model, stream, eos_id, hidden, backward)
    return list(nll.split([len(line) for line in lines])), hidden


def score_stream(model: RNNLanguageModel, targets: torch.Tensor, eos_id: int, hidden=None, backward: bool = False):
    """Per-token nll of one token stream, left to right with the state carried, and the final state.

    The token before ``targets[0]`` is taken to be ``<eos>``: streams start at a line boundary. ``backward``
    reads it with a biLM's right-to-left stack (the caller has reversed the stream).
    """
    model.eval()
    device = model.device
    targets = targets.to(device)
    inputs = torch.cat([targets.new_full((1,), eos_id), targets[:-1]])
    pieces = []
    with torch.inference_mode():
        for start in range(0, len(targets), STREAM_CHUNK):
            poll_threads()
            stop = start + STREAM_CHUNK
            features, hidden = model.features(inputs[None, start:stop], hidden, backward)  # (1, T, H)
            pieces.append(model.token_nll(features[0], targets[start:stop]))
    return torch.cat(pieces).cpu(), hidden


def line_batches(lines: Sequence[Sequence[int]], eos_id: int, batch_size: int, device: torch.device
                 ) -> Iterator[tuple[list[int], list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Lines batched longest first, for scoring from fresh states: per batch, the lines' indices and lengths, the
    right-padded inputs and targets (B, T) on ``device``, and the mask of the real positions. Padding sits after
    each line's end, so it never reaches a position that is scored."""
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]), reverse=True)
    for first in range(0, len(order), batch_size):
        poll_threads()
        batch = order[first : first + batch_size]
        lengths = [len(lines[i]) for i in batch]
        width = lengths[0]
        targets = np.full((len(batch), width), eos_id, dtype=np.int64)
        for row, index in enumerate(batch):
            targets[row, : lengths[row]] = lines[index]
        inputs = np.concatenate([np.full((len(batch), 1), eos_id, dtype=np.int64), targets[:, :-1]], axis=1)
        mask = torch.from_numpy(np.arange(width)[None, :] < np.asarray(lengths)[:, None]).to(device)
        yield batch, lengths, torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device), mask


def _score_lines_batched(
    model: RNNLanguageModel, lines: Sequence[Sequence[int]], eos_id: int, batch_size: int, backward: bool = False,
) -> list[torch.Tensor]:
    results: list[torch.Tensor | None] = [None] * len(lines)
    for batch, lengths, inputs, targets, mask in line_batches(lines, eos_id, batch_size, model.device):
        features, _ = model.features(inputs, backward=backward)  # (B, T, H)
        nll = model.token_nll(features[mask], targets[mask]).cpu()
        for index, part in zip(batch, nll.split(lengths)):
            results[index] = part
    return results  # type: ignore[return-value]
