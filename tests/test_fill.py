"""`rnnlm fill`: fillers ranked by the probability of the whole sentence, for every tokenizer kind."""

from __future__ import annotations

import json
import math
import random

import pytest
from conftest import TINY_MODEL

PLANTED = [  # the subject can only be told from the words after the blank
    "the cat sat on the mat .",
    "the dog ran in the park .",
    "the bird flew over the tree .",
]


@pytest.fixture(scope="module")
def planted_model(cli, tmp_path_factory):
    """A tiny word model trained on sentences whose subject is fixed by what follows it."""
    root = tmp_path_factory.mktemp("planted")
    shuffle = random.Random(0)
    for split, count in (("train", 600), ("valid", 30)):
        (root / f"{split}.txt").write_text("\n".join(shuffle.choice(PLANTED) for _ in range(count)) + "\n",
                                           encoding="utf-8")
    cli("tokenize", root / "train.txt", "--valid", root / "valid.txt", "--out", root / "data", "-q")
    cli("train", root / "data", "--out", root / "planted.pt", *TINY_MODEL, "--epochs", "4", "--optimizer", "adam",
        "--lr", "0.02", "--dropout", "0", "-q")
    return root / "planted.pt"


@pytest.mark.parametrize("sentence, answer", [
    ("the ___ sat on the mat .", "cat"),
    ("the ___ ran in the park .", "dog"),
    ("the ___ flew over the tree .", "bird"),
    ("the cat sat on the ___ .", "mat"),
])
def test_the_planted_answer_ranks_first(cli, planted_model, sentence, answer):
    result = cli("fill", planted_model, sentence, "--json")
    ranked = json.loads(result.stdout)
    assert result.stderr == ""
    assert ranked["sentence"] == sentence and ranked["fillers"][0]["filler"] == answer
    assert ranked["fillers"][0]["probability"] > 0.5
    assert ranked["scored"] == 14  # the 16-token vocabulary less <unk> and <eos>
    assert len(ranked["fillers"]) == 10


def test_vocabulary_ranking_agrees_with_candidates_and_with_eval(cli, planted_model, tmp_path):
    sentence = "the ___ ran in the park ."
    everything = cli.json("fill", planted_model, sentence, "--top", "100")
    by_word = {item["filler"]: item for item in everything["fillers"]}
    assert len(by_word) == 14
    assert sum(item["probability"] for item in by_word.values()) == pytest.approx(1.0, abs=1e-9)
    chosen = cli.json("fill", planted_model, sentence, "--candidates", "cat,dog,tree")
    assert [item["filler"] for item in chosen["fillers"]] == ["dog", "cat", "tree"]
    for item in chosen["fillers"]:
        # the batched vocabulary path and the line-by-line candidate path give the same sentence score ...
        assert item["logprob"] == pytest.approx(by_word[item["filler"]]["logprob"], abs=1e-4)
        # ... which is what `rnnlm eval` gives the filled-in sentence, its end of line included
        text = tmp_path / "filled.txt"
        text.write_text(sentence.replace("___", item["filler"]) + "\n", encoding="utf-8")
        nll = cli.json("eval", planted_model, text, "--context", "line")["total"]["nll"]
        assert item["logprob"] == pytest.approx(-nll, abs=1e-4)
    shares = [item["probability"] for item in chosen["fillers"]]
    assert sum(shares) == pytest.approx(1.0) and shares[0] > shares[1] > shares[2]


def test_table_and_tsv_output(cli, planted_model, tmp_path):
    sentences = tmp_path / "cloze.txt"
    sentences.write_text("the ___ sat on the mat .\nthe dog ran in the ___ .\n", encoding="utf-8")
    tsv = cli("fill", planted_model, "--sentences-from", sentences, "--format", "tsv", "--top", "3")
    rows = [line.split("\t") for line in tsv.stdout.splitlines()]
    assert rows[0] == ["sentence", "rank", "filler", "logprob", "probability"]
    assert len(rows) == 1 + 2 * 3
    assert rows[1][:3] == ["the ___ sat on the mat .", "1", "cat"] and rows[4][:3] == ["the dog ran in the ___ .",
                                                                                       "1", "park"]
    assert all(float(row[3]) < 0 and 0 <= float(row[4]) <= 1 for row in rows[1:])
    from_stdin = cli("fill", planted_model, "--sentences-from", "-", "--format", "tsv", "--top", "3",
                     input=sentences.read_text(encoding="utf-8"))
    assert from_stdin.stdout == tsv.stdout
    table = cli("fill", planted_model, "the ___ sat on the mat .", "--top", "2")
    assert "cat" in table.stdout and "logprob" in table.stdout and table.stderr == ""


def test_subword_and_character_models_rank_candidate_strings(cli, corpus, tmp_path, char_model):
    cli("tokenize", corpus["train"], "--valid", corpus["valid"], "--kind", "bpe", "--out", tmp_path / "d", "-q")
    cli("train", tmp_path / "d", "--out", tmp_path / "sp.pt", *TINY_MODEL, "--epochs", "1", "-q")
    for checkpoint in (tmp_path / "sp.pt", char_model):
        result = cli.json("fill", checkpoint, "太郎は___に行きました。", "--candidates", "公園,学校,the dog")
        assert sorted(item["filler"] for item in result["fillers"]) == ["the dog", "公園", "学校"]
        assert all(math.isfinite(item["logprob"]) and item["logprob"] < 0 for item in result["fillers"])
        # a subword or character model cannot list its vocabulary as fillers
        assert "--candidates" in cli("fill", checkpoint, "太郎は___に行きました。", expect=2).stderr


def test_candidates_outside_the_vocabulary_are_left_out_with_a_warning(cli, planted_model):
    result = cli("fill", planted_model, "the ___ sat on the mat .", "--candidates", "cat,zebra,dog", "--json")
    ranked = json.loads(result.stdout)
    assert [item["filler"] for item in ranked["fillers"]] == ["cat", "dog"] and ranked["left_out"] == ["zebra"]
    assert result.stderr.count("warning:") == 1 and "zebra" in result.stderr
    none_known = cli("fill", planted_model, "the ___ sat .", "--candidates", "zebra,yak", expect=1)
    assert none_known.stdout == "" and "vocabulary" in none_known.stderr


@pytest.mark.parametrize("arguments, message", [
    (["the cat sat ."], "no blanks"),
    (["the ___ sat on ___ ."], "2 blanks"),
    ([], "one of the two"),
    (["the ___ sat .", "--candidates", ","], "--candidates"),
    (["the ___ sat .", "--top", "0"], "--top"),
])
def test_fill_usage_errors(cli, planted_model, arguments, message):
    result = cli("fill", planted_model, *arguments, expect=2)
    assert result.stdout == "" and message in result.stderr and "Traceback" not in result.stderr


def test_a_sentence_without_a_blank_in_a_file_is_a_data_error(cli, planted_model, tmp_path):
    sentences = tmp_path / "cloze.txt"
    sentences.write_text("the ___ sat on the mat .\nno blank here\n", encoding="utf-8")
    result = cli("fill", planted_model, "--sentences-from", sentences, "--json", expect=1)
    assert len(result.stdout.splitlines()) == 1  # the first sentence's answer is out before the error
    assert "no blank here" in result.stderr
