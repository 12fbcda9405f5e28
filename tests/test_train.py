"""`rnnlm train`: learning, checkpoints, resume, time budget, held-out validation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY_MODEL
from rnnlm_cli.checkpoint import load_checkpoint
from rnnlm_cli.data import Dataset


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_each_cell_lowers_validation_loss(cli, word_dataset, tmp_path, cell):
    vocab = Dataset(word_dataset).tokenizer.vocab_size
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", "--cell", cell, *TINY_MODEL, "--epochs", "4",
                 "--optimizer", "adam", "--lr", "0.01", "--json")
    summary = json.loads(result.stdout)
    valid = [record["valid_ppl"] for record in summary["history"]]
    assert len(valid) == 4 and summary["stop_reason"] == "completed"
    assert valid[-1] < valid[0]
    # an untrained model is close to uniform (ppl ~ vocabulary size); training must beat that by far
    assert summary["best_valid_ppl"] < vocab / 4
    assert summary["best_valid_ppl"] == pytest.approx(min(valid))
    assert "epoch 4/4" in result.stderr
    assert load_checkpoint(tmp_path / "m.pt").model_config.cell == cell


def test_best_and_last_checkpoints(cli, word_dataset, tmp_path):
    out = tmp_path / "run.pt"
    summary = cli.json("train", word_dataset, "--out", out, *TINY_MODEL, "--epochs", "2", "-q")
    best, last = load_checkpoint(out), load_checkpoint(tmp_path / "run.last.pt")
    assert summary["last_checkpoint"] == str(tmp_path / "run.last.pt")
    assert not best.resumable and last.resumable
    assert best.train["epoch"] == summary["best_epoch"] and last.train["epoch"] == 2
    assert best.train["best_valid_loss"] == pytest.approx(min(r["valid_loss"] for r in summary["history"]))
    # the best checkpoint evaluates to the validation ppl training reported for it
    valid_text = Dataset(word_dataset).split_info("valid")["source"]
    total = cli.json("eval", out, valid_text)["total"]
    assert total["ppl"] == pytest.approx(summary["best_valid_ppl"], rel=1e-5)


def _weights(path):
    return load_checkpoint(path).model_state


def test_resume_at_an_epoch_boundary_is_exact(cli, word_dataset, tmp_path):
    common = [*TINY_MODEL, "--dropout", "0.3", "--seed", "7", "-q"]
    straight = cli.json("train", word_dataset, "--out", tmp_path / "a.pt", "--epochs", "3", *common)
    cli("train", word_dataset, "--out", tmp_path / "b.pt", "--epochs", "1", *common)
    resumed = cli.json("train", word_dataset, "--resume", tmp_path / "b.pt", "--epochs", "3", "-q")
    assert [r["valid_loss"] for r in resumed["history"]] == [r["valid_loss"] for r in straight["history"]]
    for name, tensor in _weights(tmp_path / "a.last.pt").items():
        assert torch.equal(tensor, _weights(tmp_path / "b.last.pt")[name]), name


def test_max_time_stops_mid_epoch_and_resume_finishes_exactly(cli, word_dataset, tmp_path):
    common = [*TINY_MODEL, "--dropout", "0.3", "--seed", "3", "--epochs", "2"]
    straight = cli.json("train", word_dataset, "--out", tmp_path / "a.pt", *common, "-q")
    stopped = cli("train", word_dataset, "--out", tmp_path / "b.pt", *common, "--max-time", "0.001", "--json")
    summary = json.loads(stopped.stdout)
    assert summary["stop_reason"] == "max_time" and summary["epochs"] == 0
    assert summary["history"][0]["complete"] is False
    assert f"--resume {tmp_path / 'b.pt'}" in stopped.stderr
    assert load_checkpoint(tmp_path / "b.pt").model_config.hidden_size == 24  # best so far is loadable
    resumed = cli.json("train", word_dataset, "--resume", tmp_path / "b.pt", "-q")
    assert resumed["epochs"] == 2 and resumed["stop_reason"] == "completed"
    complete = [r["valid_loss"] for r in resumed["history"] if r["complete"]]
    assert complete == [r["valid_loss"] for r in straight["history"]]
    for name, tensor in _weights(tmp_path / "a.last.pt").items():
        assert torch.equal(tensor, _weights(tmp_path / "b.last.pt")[name]), name


def test_plateau_decay_and_early_stop(cli, word_dataset, tmp_path):
    # a big model on 300 lines overfits quickly: validation stops improving, the rate is halved, training stops
    summary = cli.json("train", word_dataset, "--out", tmp_path / "m.pt", "--hidden-size", "128", "--emb-size", "64",
                       "--dropout", "0", "--optimizer", "adam", "--lr", "0.02", "--batch-size", "8", "--bptt", "12",
                       "--epochs", "40", "--lr-decay", "2", "--patience", "2", "-q")
    history = summary["history"]
    assert summary["stop_reason"] == "early_stop" and summary["epochs"] == len(history) < 40
    best = math.inf
    for record, following in zip(history, history[1:]):
        improved = record["valid_loss"] < best
        best = min(best, record["valid_loss"])
        assert following["lr"] == pytest.approx(record["lr"] if improved else record["lr"] / 2)
    assert min(r["valid_loss"] for r in history[-2:]) >= min(r["valid_loss"] for r in history[:-2])
    assert history[-1]["lr"] < 0.02


def test_without_a_valid_split_a_tail_of_train_is_held_out(cli, corpus, tmp_path):
    cli("tokenize", corpus["train"], "--out", tmp_path / "d", "-q")
    result = cli("train", tmp_path / "d", "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "1")
    assert "no valid split" in result.stderr and "holding out the last 15 lines" in result.stderr
    assert load_checkpoint(tmp_path / "m.pt").data["validation"].startswith("held out: the last 15 lines")


def test_train_usage_errors(cli, word_dataset, word_model, tmp_path):
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", "--emb-size", "16", "--hidden-size", "32",
                 "--tie-weights", expect=2)
    assert result.stdout == "" and "--tie-weights needs --emb-size equal to --hidden-size" in result.stderr
    assert not (tmp_path / "m.pt").exists()
    assert "--out" in cli("train", word_dataset, expect=2).stderr
    result = cli("train", word_dataset, "--resume", word_model, "--hidden-size", "99", expect=2)
    assert "cannot change --hidden-size" in result.stderr
    result = cli("train", word_dataset, "--resume", tmp_path / "none.pt", expect=1)
    assert "nothing to resume" in result.stderr
    result = cli("train", tmp_path / "no-such-dir", "--out", tmp_path / "m.pt", expect=1)
    assert "no such dataset directory" in result.stderr
