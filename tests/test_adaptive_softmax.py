"""--softmax adaptive: one distribution behind every path (training loss, scores, logits), and every command."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_MODEL

from rnnlm_cli.checkpoint import load_checkpoint
from rnnlm_cli.data import Dataset
from rnnlm_cli.errors import ConfigError
from rnnlm_cli.model import ModelConfig, RNNLanguageModel

ADAPTIVE = ["--softmax", "adaptive", "--cutoffs", "40,120"]


def test_adaptive_paths_agree_on_one_normalised_distribution():
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(300, emb_size=8, hidden_size=16, layers=1, softmax="adaptive",
                                         cutoffs=[20, 100])).eval()
    ids = torch.randint(0, 300, (3, 9))
    features, _ = model.features(ids)
    logits = model.logits(features)  # (3, 9, 300)
    assert logits.shape == (3, 9, 300)
    assert torch.allclose(logits.logsumexp(-1), torch.zeros(3, 9), atol=1e-5)  # probabilities sum to 1
    flat, targets = features.reshape(-1, 16), torch.randint(0, 300, (27,))
    # targets in the head, in each cluster: scoring and the training loss read the same numbers
    targets[:3] = torch.tensor([5, 50, 250])
    nll = model.token_nll(flat, targets, chunk_size=4)
    assert torch.allclose(nll, -logits.reshape(27, 300).gather(1, targets[:, None])[:, 0], atol=1e-5)
    assert model.loss(flat, targets).item() == pytest.approx(nll.mean().item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the adaptive head runs in fp32 under autocast too
        assert model.loss(flat, targets).dtype == torch.float32
    assert ModelConfig(300, softmax="adaptive").cutoffs == [150]  # automatic: below the vocabulary size
    assert ModelConfig(30000, softmax="adaptive").cutoffs == [2000, 10000]
    with pytest.raises(ConfigError, match="too small for 2 adaptive softmax clusters"):
        ModelConfig(300, hidden_size=8, softmax="adaptive", cutoffs=[20, 100])  # a cluster of width 8 // 16 = 0


def test_every_command_runs_an_adaptive_model(cli, word_dataset, corpus, tmp_path):
    out = tmp_path / "a.pt"
    summary = cli.json("train", word_dataset, "--out", out, *TINY_MODEL, *ADAPTIVE, "--epochs", "3",
                       "--optimizer", "adam", "--lr", "0.01", "-q")
    valid = [record["valid_ppl"] for record in summary["history"]]
    vocab = Dataset(word_dataset).tokenizer.vocab_size
    assert valid[-1] < valid[0] and summary["best_valid_ppl"] < vocab / 4
    config = load_checkpoint(out).model_config
    assert config.softmax == "adaptive" and config.cutoffs == [40, 120]
    assert "adaptive softmax (cutoffs 40, 120)" in cli("info", out).stdout
    # eval reproduces the validation ppl training reported, in the training precision
    valid_text = Dataset(word_dataset).split_info("valid")["source"]
    total = cli.json("eval", out, valid_text, "--precision", summary["precision"], "-q")["total"]
    assert total["ppl"] == pytest.approx(summary["best_valid_ppl"], rel=1e-5)
    # line context scores the same tokens from fresh states: a different, finite number
    line = cli.json("eval", out, corpus["test"], "--context", "line", "-q")["total"]
    assert math.isfinite(line["ppl"]) and line["tokens"] > 0
    samples = cli("sample", out, "-n", "3", "--seed", "1").stdout.splitlines()
    assert len(samples) == 3
    # fill ranks the whole vocabulary; the shares of all fillers sum to 1
    fills = cli.json("fill", out, "Tom said ___ to Mary .", "--top", str(vocab))
    shares = [row["probability"] for row in fills["fillers"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-6) and len(shares) > 100


def test_adaptive_softmax_settings_are_checked(cli, word_dataset, tmp_path):
    out = tmp_path / "x.pt"
    cases = [
        (["--cutoffs", "40,120"], "add --softmax adaptive"),
        ([*ADAPTIVE, "--tie-weights"], "does not combine with --softmax adaptive"),
        (["--softmax", "adaptive", "--cutoffs", "120,40"], "increasing whole numbers"),
        (["--softmax", "adaptive", "--cutoffs", "40,x"], "whole numbers separated by commas"),
        (["--softmax", "adaptive", "--cutoffs", "40,100000"], "below the vocabulary size"),
    ]
    for options, message in cases:
        result = cli("train", word_dataset, "--out", out, *TINY_MODEL, *options, expect=2)
        assert result.stdout == "" and message in result.stderr and result.stderr.count("\n") == 1, options
    assert not out.exists()
    cli("train", word_dataset, "--out", out, *TINY_MODEL, *ADAPTIVE, "--epochs", "1", "-q")
    refused = cli("train", word_dataset, "--resume", out, "--softmax", "full", "--epochs", "2", expect=2)
    assert "cannot change --softmax" in refused.stderr
