"""--direction backward|both: the right-to-left direction, checked against a plain model fed reversed text."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_MODEL

from rnnlm_cli.checkpoint import load_checkpoint, weights_digest

TRAIN = [*TINY_MODEL, "--optimizer", "adam", "--lr", "0.01", "--precision", "fp32", "-q"]


@pytest.fixture(scope="module")
def bilm(cli, word_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bilm") / "bi.pt"
    summary = cli.json("train", word_dataset, "--out", out, *TRAIN, "--epochs", "2", "--direction", "both")
    return out, summary


def _one_direction(bilm_path, tmp_path, backward: bool):
    """The biLM's forward or backward stack as a plain forward model (same embedding and softmax)."""
    raw = torch.load(bilm_path, weights_only=True)
    state = {key: value for key, value in raw["model"].items() if not key.startswith("rnn_backward.")}
    if backward:
        state.update({key.replace("rnn_backward.", "rnn."): value for key, value in raw["model"].items()
                      if key.startswith("rnn_backward.")})
    path = tmp_path / ("backward-as-forward.pt" if backward else "forward-only.pt")
    torch.save({**raw, "model": state, "model_config": {**raw["model_config"], "direction": "forward"},
                "weights_sha256": weights_digest(state)}, path)  # new weights, their own checksum
    return path


def _reversed_text(path, out):
    lines = path.read_text(encoding="utf-8").splitlines()
    out.write_text("".join(" ".join(reversed(line.split())) + "\n" for line in lines), encoding="utf-8")
    return out


def test_both_directions_are_trained_validated_and_evaluated(cli, bilm, corpus, tmp_path):
    path, summary = bilm
    for record in summary["history"]:
        # the schedule follows the mean of the two directions' losses
        mean = (math.log(record["valid_ppl_forward"]) + math.log(record["valid_ppl_backward"])) / 2
        assert record["valid_loss"] == pytest.approx(mean, rel=1e-9)
    assert "bidirectional" in cli("info", path).stdout
    # eval reports each direction; the backward one is the validation's, reproduced
    valid = cli.json("eval", path, corpus["valid"], "-q")["total"]
    best = next(r for r in summary["history"] if r["epoch"] == summary["best_epoch"])
    assert valid["ppl"] == pytest.approx(best["valid_ppl_forward"], rel=1e-5)
    assert valid["backward_ppl"] == pytest.approx(best["valid_ppl_backward"], rel=1e-5)
    # ... and it is what the backward stack gives when it reads the reversed lines as a forward model would
    test = cli.json("eval", path, corpus["test"], "-q")["total"]
    as_forward = _one_direction(path, tmp_path, backward=True)
    reversed_test = _reversed_text(corpus["test"], tmp_path / "reversed.txt")
    expected = cli.json("eval", as_forward, reversed_test, "--context", "line", "-q")["total"]
    assert test["backward_ppl"] == pytest.approx(expected["ppl"], rel=1e-6)
    assert test["ppl"] == pytest.approx(cli.json("eval", _one_direction(path, tmp_path, backward=False),
                                                 corpus["test"], "-q")["total"]["ppl"], rel=1e-6)
    tsv = cli("eval", path, corpus["test"], "--format", "tsv").stdout.splitlines()
    assert tsv[0].split("\t")[-1] == "backward_ppl"
    assert float(tsv[-1].split("\t")[-1]) == pytest.approx(test["backward_ppl"], rel=1e-6)


def test_fill_averages_the_two_directions_sentence_log_probabilities(cli, bilm, tmp_path):
    path, _ = bilm
    sentence = "Tom said ___ to Mary ."
    forward_only, backward_only = _one_direction(path, tmp_path, False), _one_direction(path, tmp_path, True)

    def logprob(model, text):
        row = json.loads(cli("eval", model, "-", "--level", "line", "--format", "json", "--context", "line",
                             input=text + "\n").stdout)
        return row["log10_prob"] * math.log(10)

    for options in ([], ["--candidates", "hi,the,cake"]):  # the whole vocabulary, or given fillers
        fillers = cli.json("fill", path, sentence, "--top", "3", *options)["fillers"]
        for filler in fillers:
            text = sentence.replace("___", filler["filler"])
            expected = (logprob(forward_only, text) + logprob(backward_only, " ".join(reversed(text.split())))) / 2
            assert filler["logprob"] == pytest.approx(expected, rel=1e-5), (options, filler)


def test_a_backward_model_reads_right_to_left(cli, word_dataset, corpus, tmp_path):
    out = tmp_path / "back.pt"
    summary = cli.json("train", word_dataset, "--out", out, *TRAIN, "--epochs", "1", "--direction", "backward")
    result = cli("eval", out, corpus["valid"], "--json")
    assert json.loads(result.stdout)["total"]["ppl"] == pytest.approx(summary["best_valid_ppl"], rel=1e-5)
    assert "scored line by line" in result.stderr
    # the same as a forward model reading the reversed lines
    raw = torch.load(out, weights_only=True)
    torch.save({**raw, "model_config": {**raw["model_config"], "direction": "forward"}}, tmp_path / "f.pt")
    reversed_valid = _reversed_text(corpus["valid"], tmp_path / "r.txt")
    assert cli.json("eval", tmp_path / "f.pt", reversed_valid, "--context", "line", "-q")["total"]["ppl"] == \
        pytest.approx(summary["best_valid_ppl"], rel=1e-5)
    refused = cli("sample", out, expect=1)
    assert "cannot continue a prompt" in refused.stderr and refused.stdout == ""


def test_a_bidirectional_run_resumes_exactly(cli, word_dataset, tmp_path):
    common = [*TRAIN, "--direction", "both", "--dropout", "0.2", "--seed", "5"]
    straight = cli.json("train", word_dataset, "--out", tmp_path / "a.pt", "--epochs", "2", *common)
    cli("train", word_dataset, "--out", tmp_path / "b.pt", "--epochs", "1", *common)
    resumed = cli.json("train", word_dataset, "--resume", tmp_path / "b.pt", "--epochs", "2", "-q")
    assert [r["valid_loss"] for r in resumed["history"]] == [r["valid_loss"] for r in straight["history"]]
    a, b = load_checkpoint(tmp_path / "a.last.pt").model_state, load_checkpoint(tmp_path / "b.last.pt").model_state
    assert any(key.startswith("rnn_backward.") for key in a)
    assert all(torch.equal(a[key], b[key]) for key in a)
    refused = cli("train", word_dataset, "--resume", tmp_path / "b.pt", "--direction", "forward", expect=2)
    assert "cannot change --direction" in refused.stderr
