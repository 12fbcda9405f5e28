"""The checkpoint format: plain data under weights_only, self-describing, strict on load."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re

import pytest
import torch

from rnnlm_cli.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_checkpoint,
    save_checkpoint,
    weights_digest,
)
from rnnlm_cli.tokenizers import tokenizer_from_dict


def test_loads_with_plain_torch_weights_only(word_model, corpus):
    raw = torch.load(word_model, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert set(raw) >= {"model_config", "model", "tokenizer", "train", "data", "versions"}
    config = raw["model_config"]
    assert config["cell"] == "lstm" and config["hidden_size"] == 24 and config["layers"] == 1
    assert raw["model"]["decoder.weight"].shape == (config["vocab_size"], 24)
    assert raw["model"]["rnn.weight_ih_l0"].shape == (4 * 24, 24)
    tokenizer = tokenizer_from_dict(raw["tokenizer"])
    assert tokenizer.vocab_size == config["vocab_size"]
    assert raw["train"]["config"]["optimizer"] == "adam" and raw["train"]["config"]["epochs"] == 2
    # the best-model file is written at the end of the epoch that reached the best validation loss
    assert raw["train"]["epoch"] == raw["train"]["best_epoch"] and raw["train"]["state"] is None
    train_sha = hashlib.sha256(corpus["train"].read_bytes()).hexdigest()
    assert raw["data"]["splits"]["train"]["sha256"] == train_sha
    assert raw["versions"]["torch"] == str(torch.__version__)


def test_round_trip_keeps_the_scores(cli, word_model, corpus, tmp_path):
    copy = tmp_path / "copy.pt"
    save_checkpoint(load_checkpoint(word_model), copy)
    original = cli.json("eval", word_model, corpus["test"])["total"]
    again = cli.json("eval", copy, corpus["test"])["total"]
    assert original == {**again}
    assert not list(tmp_path.glob(".*.tmp"))


def test_info(cli, word_model, corpus):
    info = cli.json("info", word_model)
    checkpoint = load_checkpoint(word_model)
    assert info["parameters"] == sum(t.numel() for t in checkpoint.model_state.values())
    assert info["tokenizer_kind"] == "word" and info["vocab_size"] == checkpoint.model_config.vocab_size
    assert info["epochs_trained"] == info["best_epoch"] and len(info["history"]) == info["best_epoch"]
    assert cli.json("info", word_model.with_name("word.last.pt"))["epochs_trained"] == 2
    best = min(record["valid_loss"] for record in info["history"])
    assert info["best_valid_ppl"] == pytest.approx(math.exp(best))
    assert info["data"]["splits"]["train"]["sha256"] == hashlib.sha256(corpus["train"].read_bytes()).hexdigest()
    table = cli("info", word_model)
    assert "parameters" in table.stdout and f"{info['parameters']:,}" in table.stdout and table.stderr == ""
    # the settings given (conftest's TINY_MODEL and the fixture's Adam) are marked; values read as words
    assert set(info["overrides"]) == {"layers", "emb_size", "hidden_size", "bptt", "batch_size", "epochs",
                                      "optimizer", "lr"}
    rows = {cells[0]: cells[1:] for cells in (re.split(r" {2,}", line.strip()) for line in table.stdout.splitlines())}
    assert rows["lr"] == ["0.01 *"] and rows["optimizer"] == ["adam *"] and rows["dropout"] == ["0.2"]
    assert rows["variational"] == ["no"] and rows["dropout_input"] == ["= dropout"] and rows["epochs trained"] == ["2"]
    assert not re.search(r"\b(None|False|True)\b", table.stdout)
    assert "━ train, ╍ validation" in table.stdout  # the curve's two bars differ in shape, not just in colour


def test_tied_weights_count_once(cli, word_dataset, tmp_path):
    cli("train", word_dataset, "--out", tmp_path / "tied.pt", "--layers", "1", "--emb-size", "16",
        "--hidden-size", "16", "--tie-weights", "--epochs", "1", "--batch-size", "8", "-q")
    info = cli.json("info", tmp_path / "tied.pt")
    vocab = info["vocab_size"]
    lstm = 4 * 16 * (16 + 16 + 2)
    assert info["parameters"] == vocab * 16 + lstm + vocab  # embedding (= output weights) + LSTM + output bias
    assert info["model_config"]["tie_weights"] is True


class _Planted:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_and_broken_files_give_one_line_and_exit_1(cli, word_model, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Planted(str(marker))}, evil)
    legacy_evil = tmp_path / "legacy.pt"
    legacy_evil.write_bytes(pickle.dumps(_Planted(str(marker))))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(word_model.read_bytes()[:5000])
    text = tmp_path / "text.pt"
    text.write_text("hello")
    not_ours = tmp_path / "not-ours.pt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    newer = tmp_path / "newer.pt"
    raw = torch.load(word_model, weights_only=True)
    torch.save({**raw, "format_version": FORMAT_VERSION + 1}, newer)
    mismatched = tmp_path / "mismatched.pt"
    torch.save({**raw, "model_config": {**raw["model_config"], "hidden_size": 25}}, mismatched)

    expected = {evil: "refused to load", legacy_evil: "not a readable checkpoint", empty: "empty file",
                truncated: "not a readable checkpoint", text: "not a readable checkpoint",
                not_ours: "not an rnnlm checkpoint", newer: "newer than this rnnlm reads",
                mismatched: "model_config says hidden_size 25, and model['rnn.weight_hh_l0'] is (96, 24)"}
    for path, message in expected.items():
        for command in (["info", path], ["eval", path, "-"], ["sample", path], ["fill", path, "a ___ b"]):
            result = cli(*command, input="a b\n", expect=1)
            assert result.stdout == ""
            assert message in result.stderr, (path, result.stderr)
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not marker.exists()


def test_hostile_model_settings_are_refused_at_once_in_rnnlms_words(cli, word_model, tmp_path):
    """Declared sizes are checked against the stored tensors before any model is built, and entries of the wrong
    kind are named: nothing is allocated from a stranger's numbers, and no Python error reaches the user."""
    import time

    raw = torch.load(word_model, weights_only=True)
    del raw["weights_sha256"]  # hand-made files: their settings are what is judged
    config, state = raw["model_config"], raw["model"]
    cases = {
        "layers": ({**raw, "model_config": {**config, "layers": 1_000_000}},
                   "says 1000000 layers, and its weights hold 1"),
        "hidden": ({**raw, "model_config": {**config, "hidden_size": 10**9}},
                   "model_config says hidden_size 1000000000"),
        "emb": ({**raw, "model_config": {**config, "emb_size": 10**9}}, "emb_size 1000000000, and model['embedding"),
        "text": ({**raw, "model_config": {**config, "hidden_size": "24"}},
                 "model_config['hidden_size'] is '24', not a"),
        "float": ({**raw, "model_config": {**config, "hidden_size": 24.0}}, "model_config['hidden_size'] is 24.0"),
        "cell": ({**raw, "model_config": {**config, "cell": "transformer"}}, "model_config['cell'] is 'transformer'"),
        "state": ({**raw, "model": "weights"}, "its 'model' entry is not a table of named tensors"),
        "train": ({**raw, "train": "a string"}, "its 'train' entry is a str, not a table"),
        "tokens": ({**raw, "tokenizer": {"kind": "word", "tokens": 5}}, "malformed tokenizer data"),
        "sp": ({**raw, "tokenizer": {"kind": "unigram", "model": b"garbage bytes"}}, "does not parse"),
        "shape": ({**raw, "model": {**state, "decoder.bias": torch.zeros(3)}},
                  "model['decoder.bias'] has shape (3,), and its model config needs"),
        "extra": ({**raw, "model": {**state, "rnn.weight_ih_l7x": torch.zeros(1)}}, "has no place for"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(content, path)
        for command in (["info", path], ["eval", path, "-"]):
            began = time.monotonic()
            result = cli(*command, input="a b\n", expect=1)
            assert time.monotonic() - began < 10, name  # refused at once (generous: CI machines are shared)
            assert result.stdout == "" and message in result.stderr, (name, result.stderr)
            assert result.stderr.count("\n") == 1
            assert not re.search(r"TypeError|AttributeError|RuntimeError|INTERNAL|\.cc\(|state_dict", result.stderr)


def test_a_model_with_broken_weights_is_an_error_not_a_number(cli, word_model, tmp_path):
    raw = torch.load(word_model, weights_only=True)
    broken = tmp_path / "nan.pt"
    state = {**raw["model"], "decoder.bias": torch.full_like(raw["model"]["decoder.bias"], float("nan"))}
    torch.save({**raw, "model": state, "weights_sha256": weights_digest(state)}, broken)  # trained into NaN
    text = tmp_path / "t.txt"
    text.write_text("Tom gave the book to Sam .\n", encoding="utf-8")
    for context in ("stream", "line"):
        result = cli("eval", broken, text, "--context", context, expect=1)
        assert result.stdout == "" and "line 1 a score of nan (its weights are broken)" in result.stderr
    nbest = tmp_path / "n.kaldi"
    nbest.write_text("u-1 Tom gave the book\n", encoding="utf-8")
    result = cli("rescore", broken, nbest, expect=1)
    assert "scores the hypothesis on line 1" in result.stderr and result.stdout == ""


def test_damaged_weights_are_caught_by_their_checksum(cli, word_model, tmp_path):
    raw = torch.load(word_model, weights_only=True)
    assert raw["weights_sha256"] == weights_digest(raw["model"])
    state = dict(raw["model"])
    state["rnn.weight_hh_l0"] = state["rnn.weight_hh_l0"].clone()
    state["rnn.weight_hh_l0"][3, 5] += 1e-3  # one value changed on disk, everything else intact
    damaged = tmp_path / "damaged.pt"
    torch.save({**raw, "model": state}, damaged)
    for command in (["info", damaged], ["eval", damaged, "-"]):
        result = cli(*command, input="a b\n", expect=1)
        assert "its weights do not match the checksum written with them" in result.stderr and result.stdout == ""
    legacy = tmp_path / "legacy.pt"  # files written before the checksum still load
    torch.save({key: value for key, value in raw.items() if key != "weights_sha256"}, legacy)
    assert cli.json("info", legacy)["parameters"] > 0


def test_checkpoint_json_document_is_complete(cli, word_model):
    info = cli.json("info", word_model)
    json.dumps(info)  # plain JSON all the way down
    assert info["train_config"]["lr"] == 0.01 and info["resumable"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_checkpoint_trained_on_gpu_samples_on_cpu(cli, word_dataset, tmp_path):
    cli("train", word_dataset, "--out", tmp_path / "gpu.pt", "--device", "cuda", "--epochs", "1", "-q")
    result = cli("sample", tmp_path / "gpu.pt", "--device", "cpu", "-n", "2")
    assert len(result.stdout.splitlines()) == 2
    assert cli.json("eval", tmp_path / "gpu.pt", "-", "--device", "cpu", input="Tom said hi .\n")["total"]["ppl"] > 1


def test_version_1_checkpoints_still_load(cli, word_model, corpus, tmp_path):
    raw = torch.load(word_model, weights_only=True)
    old = {**raw, "format_version": 1, "model_config": {
        key: raw["model_config"][key]
        for key in ("vocab_size", "cell", "emb_size", "hidden_size", "layers", "dropout", "tie_weights", "init_range")
    }}
    torch.save(old, tmp_path / "v1.pt")
    assert cli.json("eval", tmp_path / "v1.pt", corpus["test"])["total"] == \
        cli.json("eval", word_model, corpus["test"])["total"]
    assert cli.json("info", tmp_path / "v1.pt")["format_version"] == FORMAT_VERSION == 4
    assert load_checkpoint(tmp_path / "v1.pt").train["processes"] == 1
