"""Write corpora/hello: one dependency to remember, "A came into the room . B said hi to A .".

    python corpora/make_hello.py            # rewrites corpora/hello/{train,valid,test}.txt (deterministic)

Each line names a person A, then another person B (never A), and ends with B greeting A: the last name is fixed
by the first one, nine tokens back. Everything else is certain, so a model that remembers A reaches the
perplexity exp((ln 16 + ln 15) / 13) = 1.52 (13 tokens with the end of the line), and one that has forgotten A can
do no better than exp((ln 16 + 2 ln 15) / 13) = 1.88: it must guess the last name among the 15 that are not B.
The tutorial (docs/tutorial.md) trains Elman RNNs, GRUs and LSTMs on it.
"""

from __future__ import annotations

import random
from pathlib import Path

NAMES = ("Tom", "Mary", "Ken", "Yuki", "Sam", "Hana", "Anna", "Taro", "Ben", "Emma", "Leo", "Mia", "Raj", "Zoe",
         "Omar", "Ines")
SPLITS = (("train", 6000, 1), ("valid", 500, 2), ("test", 500, 3))


def line(rng: random.Random) -> str:
    first = rng.choice(NAMES)
    other = rng.choice([name for name in NAMES if name != first])
    return f"{first} came into the room . {other} said hi to {first} ."


def main() -> None:
    out = Path(__file__).resolve().parent / "hello"
    out.mkdir(exist_ok=True)
    for split, count, seed in SPLITS:
        rng = random.Random(seed)
        (out / f"{split}.txt").write_text("".join(line(rng) + "\n" for _ in range(count)), encoding="utf-8")


if __name__ == "__main__":
    main()
