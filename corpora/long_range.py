"""Write a corpus in which a word must be predicted from a word DISTANCE tokens back, with every token's true
probability known, so that the best possible perplexity of each split is exact.

    python corpora/long_range.py --distance 20 --out data/long-20          # train / valid / test + optimum.json
    python corpora/long_range.py --distance 50 --lines 2000,200,200 --seed 3 --out data/long-50

Each line is one story, drawn independently:

    A  w_1 … w_F  B said hi to A .

- A: a name, uniform over the NAMES (probability 1 / N);
- w_1 … w_F: F = DISTANCE − 5 filler words, each uniform over FILLER (1 / |FILLER|), independently;
- B: another name, uniform over the names other than A (1 / (N − 1));
- "said hi to": certain; then A again, certain to whoever remembers it: the dependent word, DISTANCE tokens
  after the first A; then "." and the end of the line, both certain.

So a line of F + 7 words (F + 8 tokens with the end-of-sentence token that rnnlm predicts) has the exact
negative log-likelihood log N + F log |FILLER| + log (N − 1) under the process that wrote it, and the best
perplexity any model can reach is exp(that / (F + 8)). A model that has forgotten A can do no better than
1 / (N − 1) on the dependent word. The output is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

NAMES = ("Tom", "Mary", "Ken", "Yuki", "Sam", "Hana", "Anna", "Taro", "Ben", "Emma", "Leo", "Mia", "Raj", "Zoe",
         "Omar", "Ines")
FILLER = ("was", "watching", "TV", "in", "the", "home", "garden", "kitchen", "a", "book", "and", "then", "it",
          "rained", "all", "day", "so", "we", "stayed", "inside", "with", "tea", "cake", "music", "on", "radio",
          "quiet", "evening", "long", "walk", "by", "river", "cold", "wind", "old", "dog", "slept", "near", "fire",
          "window")
FIXED_AFTER_FILLER = ("said", "hi", "to")
MIN_DISTANCE = 1 + len(FIXED_AFTER_FILLER) + 1  # A, the filler, B said hi to, A: DISTANCE = F + 5


def story(distance: int, rng: random.Random) -> list[str]:
    """One line's words: a name, DISTANCE − 5 filler words, another name, "said hi to", the first name, "."."""
    if distance < MIN_DISTANCE:
        raise ValueError(f"the distance must be at least {MIN_DISTANCE}")
    first = rng.choice(NAMES)
    other = rng.choice([name for name in NAMES if name != first])
    filler = [rng.choice(FILLER) for _ in range(distance - MIN_DISTANCE)]
    return [first, *filler, other, *FIXED_AFTER_FILLER, first, "."]


def token_logprobs(words: list[str]) -> list[float]:
    """The true natural-log probability of each token of a generated line, its end-of-sentence token last."""
    filler = len(words) - 7
    if filler < 0 or words[0] not in NAMES or words[filler + 1] not in NAMES or words[-2] != words[0]:
        raise ValueError(f"not a line of this corpus: {' '.join(words)}")
    return ([-math.log(len(NAMES))] + [-math.log(len(FILLER))] * filler + [-math.log(len(NAMES) - 1)]
            + [0.0] * (len(FIXED_AFTER_FILLER) + 3))  # said hi to, A, ".", end of line


def dependent_position(words: list[str]) -> int:
    """Index of the dependent word (the second mention of the first name) in a line's tokens."""
    return len(words) - 2


def optimum(lines: list[list[str]]) -> dict[str, float]:
    """The exact best perplexity of these lines (end-of-sentence tokens counted, as rnnlm's ppl does)."""
    nll = -sum(sum(token_logprobs(words)) for words in lines)
    tokens = sum(len(words) + 1 for words in lines)
    return {"lines": len(lines), "tokens": tokens, "nll": nll, "ppl": math.exp(nll / tokens)}


def write_corpus(out: Path, distance: int, sizes: dict[str, int], seed: int) -> dict[str, dict[str, float]]:
    """Write train / valid / test .txt files and optimum.json into ``out``; the optimum per split."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    result = {}
    for split, count in sizes.items():
        lines = [story(distance, rng) for _ in range(count)]
        (out / f"{split}.txt").write_text("".join(" ".join(words) + "\n" for words in lines), encoding="utf-8")
        result[split] = optimum(lines)
    meta = {"distance": distance, "seed": seed, "names": len(NAMES), "filler_words": len(FILLER),
            "chance_on_dependent_word": 1 / (len(NAMES) - 1), "splits": result}
    (out / "optimum.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distance", type=int, required=True, help=f"tokens from a name to its dependent "
                                                                      f"mention (at least {MIN_DISTANCE})")
    parser.add_argument("--out", type=Path, required=True, help="directory for train.txt, valid.txt, test.txt")
    parser.add_argument("--lines", default="5000,500,500", help="lines of train, valid and test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.distance < MIN_DISTANCE:
        parser.error(f"--distance must be at least {MIN_DISTANCE}")
    counts = [int(part) for part in args.lines.split(",")]
    if len(counts) != 3 or min(counts) < 1:
        parser.error("--lines takes three positive counts: train,valid,test")
    for split, figures in write_corpus(args.out, args.distance, dict(zip(("train", "valid", "test"), counts)),
                                       args.seed).items():
        print(f"{split}: {figures['lines']:,} lines, {figures['tokens']:,} tokens, best possible ppl "
              f"{figures['ppl']:.4f}")


if __name__ == "__main__":
    main()
