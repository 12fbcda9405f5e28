"""corpora/long_range.py: the long-range dependency corpus and its exact optimum."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "corpora"))
import long_range


@pytest.mark.parametrize("distance", [5, 20, 50])
def test_the_dependent_word_is_the_first_name_distance_tokens_later(distance):
    rng = random.Random(1)
    for _ in range(50):
        words = long_range.story(distance, rng)
        position = long_range.dependent_position(words)
        assert words[position] == words[0] and position == distance
        assert words[0] in long_range.NAMES and words[position - 4] in long_range.NAMES
        assert words[position - 4] != words[0]
    with pytest.raises(ValueError):
        long_range.story(4, rng)


def test_the_optimum_is_the_entropy_of_the_process(tmp_path):
    sizes = {"train": 50, "valid": 20, "test": 30}
    result = long_range.write_corpus(tmp_path, 12, sizes, seed=4)
    names, filler = len(long_range.NAMES), len(long_range.FILLER)
    per_line = math.log(names) + 7 * math.log(filler) + math.log(names - 1)  # F = 12 - 5 filler words
    assert result["test"]["ppl"] == pytest.approx(math.exp(per_line / (7 + 8)), rel=1e-12)
    assert result["test"]["tokens"] == 30 * 15
    assert json.loads((tmp_path / "optimum.json").read_text())["splits"]["test"] == result["test"]
    # the same seed writes the same text; the probabilities of a line's tokens match its story
    first = (tmp_path / "test.txt").read_text()
    long_range.write_corpus(tmp_path, 12, sizes, seed=4)
    assert (tmp_path / "test.txt").read_text() == first
    words = first.splitlines()[0].split()
    logprobs = long_range.token_logprobs(words)
    assert len(logprobs) == len(words) + 1 and logprobs[long_range.dependent_position(words)] == 0.0
    with pytest.raises(ValueError):
        long_range.token_logprobs(["Tom", "said", "hi", "to", "Mary", "."])


def test_a_trained_model_stays_above_the_optimum(cli, tmp_path):
    """No model can beat the process that wrote the text; a trained one gets well below chance on the filler."""
    long_range.write_corpus(tmp_path / "text", 6, {"train": 1500, "valid": 100, "test": 200}, seed=2)
    text = tmp_path / "text"
    cli("tokenize", text / "train.txt", "--valid", text / "valid.txt", "--out", tmp_path / "d", "-q")
    cli("train", tmp_path / "d", "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "3", "--optimizer", "adam",
        "--lr", "0.01", "-q")
    ppl = cli.json("eval", tmp_path / "m.pt", text / "test.txt", "-q")["total"]["ppl"]
    best = json.loads((text / "optimum.json").read_text())["splits"]["test"]["ppl"]
    uniform = len(long_range.NAMES) + len(long_range.FILLER) + 4  # words the text uses, plus </s>
    assert best < ppl < uniform / 2
