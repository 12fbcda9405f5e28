"""Running a model over token streams and lines: the per-token scores that eval, fill and training's validation
share (one floor below the jobs).

Each line is its token ids with the end-of-sentence id last; the first token of a sequence is predicted after
``<eos>``. ``score_stream`` reads one stream with the state carried, in chunks of ``STREAM_CHUNK`` positions;
``score_token_lines`` reads lines from fresh states, batched longest first and put back in input order;
``score_prefix_tree`` reads many sequences that share prefixes (n-best lists) scoring each shared prefix once.
The adaptations that change these scores (cache, dynamic evaluation, n-gram mix) are in ``rnnlm_cli.scoring.adapt``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rnnlm_cli.model import Hidden, RNNLanguageModel, select_rows
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


def score_prefix_tree(model: RNNLanguageModel, sequences: Sequence[Sequence[int]], roots: Sequence[int],
                      root_states: Hidden | None, eos_id: int, batch_size: int = 256) -> list[torch.Tensor]:
    """Negative log-likelihood (nats) of every token of every sequence, each read after ``<eos>`` from the state of
    its root: row ``roots[i]`` of ``root_states`` (a hidden state with one batch row per root), or a fresh state for
    all when ``root_states`` is None.

    Sequences with the same root that share a prefix share its scores: they are put in a prefix tree, whose chains
    without branches are each read once, as one packed sequence from the state at the end of the chain above.
    Chains at the same depth (in branch points) are batched, longest first. A token's score is the one reading its
    sequence alone would give, up to fp32 rounding.
    """
    model.eval()
    device = model.device
    # the prefix tree: one node per distinct (root, prefix); nodes are numbered so that a parent precedes its children
    parent_of: list[int] = []  # node -> its parent node, or -1 - root
    token_of: list[int] = []
    children: list[int] = []
    index: dict[tuple[int, int], int] = {}
    paths: list[list[int]] = []
    for sequence, root in zip(sequences, roots):
        parent, path = -1 - root, []
        for token in sequence:
            node = index.get((parent, token))
            if node is None:
                node = index[(parent, token)] = len(token_of)
                parent_of.append(parent)
                token_of.append(token)
                children.append(0)
                if parent >= 0:
                    children[parent] += 1
            path.append(node)
            parent = node
        paths.append(path)
    # chains: a node continues its parent's chain when it is the parent's only child
    chain_of = [0] * len(token_of)
    chains: list[list[int]] = []  # chain -> its nodes
    chain_parent: list[int] = []  # chain -> the chain it continues from, or -1 - root
    depth: list[int] = []
    for node, parent in enumerate(parent_of):
        if parent >= 0 and children[parent] == 1:
            chain = chain_of[parent]
            chains[chain].append(node)
        else:
            chain = len(chains)
            above = chain_of[parent] if parent >= 0 else parent
            chains.append([node])
            chain_parent.append(above)
            depth.append(depth[above] + 1 if above >= 0 else 0)
        chain_of[node] = chain
    nll = torch.empty(len(token_of))
    states: dict[int, Hidden] = {}  # chain -> the state at its end, kept while chains below it wait
    waiting = [0] * len(chains)  # chains still to read below each chain
    for above in chain_parent:
        if above >= 0:
            waiting[above] += 1
    levels: dict[int, list[int]] = {}
    for chain, level in enumerate(depth):
        levels.setdefault(level, []).append(chain)
    with torch.inference_mode():
        for level in sorted(levels):
            ordered = sorted(levels[level], key=lambda chain: len(chains[chain]), reverse=True)
            for first in range(0, len(ordered), batch_size):
                poll_threads()
                batch = ordered[first : first + batch_size]
                lengths = [len(chains[chain]) for chain in batch]
                ids = np.full((len(batch), lengths[0]), eos_id, dtype=np.int64)
                targets = np.full((len(batch), lengths[0]), eos_id, dtype=np.int64)
                for row, chain in enumerate(batch):
                    nodes = chains[chain]
                    above = chain_parent[chain]
                    tokens = [token_of[node] for node in nodes]
                    targets[row, : len(nodes)] = tokens
                    ids[row, 0] = token_of[chains[above][-1]] if above >= 0 else eos_id
                    ids[row, 1 : len(nodes)] = tokens[:-1]
                hidden = _start_states(model, batch, chain_parent, states, root_states, device)
                length_tensor = torch.tensor(lengths)
                features, hidden = model.packed_features(torch.from_numpy(ids).to(device), length_tensor, hidden)
                mask = (torch.arange(lengths[0])[None, :] < length_tensor[:, None]).to(device)
                scores = model.token_nll(features[mask], torch.from_numpy(targets).to(device)[mask]).cpu()
                nodes = torch.tensor([node for chain in batch for node in chains[chain]])
                nll[nodes] = scores
                for row, chain in enumerate(batch):
                    if waiting[chain]:
                        states[chain] = select_rows(hidden, torch.tensor([row], device=device))
                    above = chain_parent[chain]
                    if above >= 0:
                        waiting[above] -= 1
                        if not waiting[above]:
                            del states[above]
    return [nll[path] for path in paths]


def _start_states(model: RNNLanguageModel, batch: list[int], chain_parent: list[int], states: dict[int, Hidden],
                  root_states: Hidden | None, device: torch.device) -> Hidden | None:
    """The state each chain of ``batch`` starts from: the end of the chain above it, or its root's."""
    if root_states is None and all(chain_parent[chain] < 0 for chain in batch):
        return None
    rows = []
    for chain in batch:
        above = chain_parent[chain]
        if above >= 0:
            rows.append(states[above])
        elif root_states is None:
            rows.append(model.init_hidden(1, device))
        else:
            rows.append(select_rows(root_states, torch.tensor([-1 - above], device=device)))
    if isinstance(rows[0], tuple):
        return tuple(torch.cat([row[part] for row in rows], dim=1) for part in range(len(rows[0])))
    return torch.cat(rows, dim=1)
