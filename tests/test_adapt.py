"""Adapted scores (`rnnlm eval --cache / --dynamic / --ngram`, `rnnlm tune`): checked against plain loops written
here from the formulas, for exact agreement where the math allows, causality, and gains where they must come."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from rnnlm_cli.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_for_inference,
    save_checkpoint,
)
from rnnlm_cli.data import Dataset
from rnnlm_cli.model import ModelConfig, RNNLanguageModel

LN10 = math.log(10)
# a text that repeats itself: what a cache and dynamic evaluation must exploit
REPEAT = "the cat sat on the mat .\nMary gave the key to Tom .\n" * 12


def tiny_checkpoint(path: Path, dataset_dir: Path, record_dataset: bool = False, **settings) -> Path:
    tokenizer = Dataset(dataset_dir).tokenizer
    torch.manual_seed(5)
    config = ModelConfig(tokenizer.vocab_size, **{"emb_size": 8, "hidden_size": 12, "layers": 1, "dropout": 0.0,
                                                  "init_range": 0.5, **settings})
    data = {"dataset": str(dataset_dir)} if record_dataset else {}
    save_checkpoint(Checkpoint(config, RNNLanguageModel(config).state_dict(), tokenizer.to_dict(), data=data), path)
    return path


def token_log10(cli, *args) -> list[float]:
    result = cli("eval", *args, "--level", "token", "--format", "json")
    return [json.loads(row)["log10_prob"] for row in result.stdout.splitlines()]


def total(cli, *args) -> dict:
    return cli.json("eval", *args)["total"]


@pytest.fixture
def repeat_file(tmp_path) -> Path:
    path = tmp_path / "repeat.txt"
    path.write_text(REPEAT, encoding="utf-8")
    return path


def reference_cache(checkpoint: Path, text: str, context: str, window: int, theta: float, lam: float) -> list[float]:
    """Per-token log10 probabilities with a cache, one position at a time, from the formula of Grave et al."""
    model, tokenizer, _ = load_for_inference(checkpoint)
    lines = [enc.ids + [tokenizer.eos_id] for enc in tokenizer.encode_many(text.splitlines())]
    streams = [[t for line in lines for t in line]] if context == "stream" else lines
    scores = []
    with torch.no_grad():
        for stream in streams:
            targets = torch.tensor(stream)
            inputs = torch.cat([torch.tensor([tokenizer.eos_id]), targets[:-1]])
            features, _ = model.features(inputs[None])
            states = features[0].double()
            probs = torch.softmax(model.logits(features[0]).double(), dim=-1)
            for t, target in enumerate(stream):
                p = float(probs[t, target])
                earlier = range(max(0, t - window), t)
                if earlier:
                    weights = torch.softmax(torch.stack([theta * states[t] @ states[i] for i in earlier]), 0)
                    p_cache = sum(float(w) for w, i in zip(weights, earlier) if stream[i] == target)
                    p = (1 - lam) * p + lam * p_cache
                scores.append(math.log10(p))
    return scores


@pytest.mark.parametrize("context", ["stream", "line"])
def test_cache_matches_the_formula_token_by_token(cli, word_dataset, tmp_path, repeat_file, context):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset)
    got = token_log10(cli, checkpoint, repeat_file, "--context", context, "--cache", "--cache-window", "7",
                      "--cache-theta", "0.8", "--cache-lambda", "0.3")
    expected = reference_cache(checkpoint, REPEAT, context, window=7, theta=0.8, lam=0.3)
    assert got == pytest.approx(expected, abs=2e-6)
    static = token_log10(cli, checkpoint, repeat_file, "--context", context)
    assert sum(got) > sum(static) + 5  # the repeats are predicted far better


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
@pytest.mark.parametrize("context", ["stream", "line"])
def test_zero_shares_and_steps_give_the_static_scores(cli, word_dataset, tmp_path, repeat_file, softmax, context):
    extra = {"softmax": "adaptive", "cutoffs": [5]} if softmax == "adaptive" else {}
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset, record_dataset=True, cell="gru", **extra)
    static = token_log10(cli, checkpoint, repeat_file, "--context", context)
    for options in (["--cache", "--cache-lambda", "0"],
                    ["--dynamic", "--dynamic-lr", "0", "--dynamic-decay", "0", "--dynamic-segment", "3"],
                    ["--dynamic", "--dynamic-rule", "sgd", "--dynamic-lr", "0", "--dynamic-decay", "0.5"]):
        got = token_log10(cli, checkpoint, repeat_file, "--context", context, *options)
        assert got == pytest.approx(static, abs=1e-6), options


@pytest.mark.parametrize("context", ["stream", "line"])
def test_dynamic_evaluation_learns_the_repeats_and_leaves_the_checkpoint_alone(cli, word_dataset, tmp_path,
                                                                               repeat_file, context):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset, record_dataset=True)
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    static = total(cli, checkpoint, repeat_file, "--context", context)["ppl"]
    for rule, lr in (("rms", "0.01"), ("sgd", "1")):
        report = cli.json("eval", checkpoint, repeat_file, "--context", context, "--dynamic", "--dynamic-rule", rule,
                          "--dynamic-lr", lr, "--dynamic-segment", "5")
        assert report["total"]["ppl"] < 0.7 * static, rule
        assert report["adaptations"]["dynamic"] == {"rule": rule, "lr": float(lr), "decay": 0.002, "segment": 5}
        assert report["adaptations"]["cache"] is None and report["adaptations"]["ngram"] is None
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before
    # each file starts from the trained weights: the same file twice scores the same twice
    twice = cli.json("eval", checkpoint, repeat_file, repeat_file, "--context", context, "--dynamic",
                     "--dynamic-lr", "0.01")
    assert twice["files"][0]["nll"] == pytest.approx(twice["files"][1]["nll"], rel=1e-9)


def test_scores_are_causal_and_sum_to_the_totals(cli, word_dataset, tmp_path, repeat_file):
    """Every adaptation at once: a prefix of the file gets exactly the scores it gets inside the whole file."""
    kenlm = pytest.importorskip("kenlm")
    del kenlm
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset, record_dataset=True)
    arpa = write_arpa(tmp_path / "lm.arpa", REPEAT)
    lines = REPEAT.splitlines(keepends=True)
    prefix = tmp_path / "prefix.txt"
    options = ["--cache", "--cache-window", "10", "--dynamic", "--dynamic-segment", "4", "--dynamic-lr", "0.01",
               "--ngram", arpa, "--ngram-weight", "0.2", "--batch-size", "4"]
    for context in ("stream", "line"):
        whole = token_log10(cli, checkpoint, repeat_file, "--context", context, *options)
        for count in (9, 17):  # within the cache's first chunk of 128 positions, and across it
            prefix.write_text("".join(lines[:count]), encoding="utf-8")
            head = token_log10(cli, checkpoint, prefix, "--context", context, *options)
            assert whole[: len(head)] == head, (context, count)
        summary = total(cli, checkpoint, repeat_file, "--context", context, *options)
        assert -sum(whole) * LN10 == pytest.approx(summary["nll"], rel=1e-9)
        lines_json = cli("eval", checkpoint, repeat_file, "--context", context, *options, "--level", "line",
                         "--format", "json").stdout.splitlines()
        assert sum(json.loads(row)["log10_prob"] for row in lines_json) == pytest.approx(sum(whole), rel=1e-9)


def write_arpa(path: Path, text: str) -> Path:
    """A maximum-likelihood bigram model of ``text`` in ARPA format (unigrams smoothed by one count)."""
    from collections import Counter

    sentences = [["<s>", *line.split(), "</s>"] for line in text.splitlines()]
    unigrams = Counter(word for sentence in sentences for word in sentence[1:])
    bigrams = Counter(pair for sentence in sentences for pair in itertools.pairwise(sentence))
    history = Counter(word for sentence in sentences for word in sentence[:-1])
    vocab = sorted(unigrams) + ["<s>", "<unk>"]
    total_count = sum(unigrams.values()) + len(vocab)
    rows = ["\\data\\", f"ngram 1={len(vocab)}", f"ngram 2={len(bigrams)}", "", "\\1-grams:"]
    for word in vocab:
        prob = -99.0 if word == "<s>" else math.log10((unigrams[word] + 1) / total_count)
        rows.append(f"{prob:.6f}\t{word}\t{math.log10(0.1):.6f}" if word in history else f"{prob:.6f}\t{word}")
    rows += ["", "\\2-grams:"]
    rows += [f"{math.log10(0.9 * count / history[a]):.6f}\t{a} {b}" for (a, b), count in sorted(bigrams.items())]
    rows += ["", "\\end\\", ""]
    path.write_text("\n".join(rows), encoding="utf-8")
    return path


def test_ngram_mix_is_linear_per_token(cli, word_dataset, tmp_path, repeat_file):
    kenlm = pytest.importorskip("kenlm")
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset)
    arpa = write_arpa(tmp_path / "lm.arpa", REPEAT)
    text = "the cat sat on the key .\nTom saw a zebra .\n"  # a word neither model knows; bigrams it has not seen
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    static = token_log10(cli, checkpoint, path)
    got = token_log10(cli, checkpoint, path, "--ngram", arpa, "--ngram-weight", "0.25")
    ngram = kenlm.Model(str(arpa))
    expected_ngram = [score for line in text.splitlines() for score, _, _ in ngram.full_scores(line)]
    assert len(got) == len(expected_ngram) == len(static)
    expected = [math.log10(0.75 * 10**s + 0.25 * 10**n) for s, n in zip(static, expected_ngram)]
    assert got == pytest.approx(expected, abs=1e-6)
    # on the text the n-gram was estimated on, it must help the untrained model a lot
    assert total(cli, checkpoint, repeat_file, "--ngram", arpa)["ppl"] < 0.5 * total(cli, checkpoint,
                                                                                     repeat_file)["ppl"]
    # tuning the weight on that text finds a setting at least as good as the default
    tuned = cli.json("tune", checkpoint, repeat_file, "--ngram", arpa, "-q")
    assert tuned["best"]["ngram"]["weight"] >= 0.5
    assert tuned["ppl"] <= total(cli, checkpoint, repeat_file, "--ngram", arpa)["ppl"]


@pytest.mark.parametrize("context", ["stream", "line"])
def test_tune_finds_settings_that_eval_reproduces(cli, word_dataset, tmp_path, repeat_file, context):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset, record_dataset=True)
    result = cli("tune", checkpoint, repeat_file, "--cache", "--dynamic", "--dynamic-lr", "0.003",
                 "--dynamic-lr", "0.01", "--dynamic-decay", "0", "--dynamic-segment", "5", "--cache-window", "5",
                 "--cache-window", "30", "--context", context, "--json", "-q")
    report = json.loads(result.stdout)
    assert result.stderr == ""
    tried = report["tried"]
    assert [t["adaptation"] for t in tried].count("dynamic") == 2
    assert [t["adaptation"] for t in tried].count("cache") == 2 * 5 * 5
    assert report["ppl"] == min(t["ppl"] for t in tried) < report["static_ppl"]
    assert set(report["best"]) == {"cache", "dynamic"}
    cache, dynamic = report["best"]["cache"], report["best"]["dynamic"]
    again = total(cli, checkpoint, repeat_file, "--cache", "--cache-window", cache["window"], "--cache-theta",
                  cache["theta"], "--cache-lambda", cache["lambda"], "--dynamic", "--dynamic-lr", dynamic["lr"],
                  "--dynamic-decay", dynamic["decay"], "--dynamic-segment", dynamic["segment"], "--context", context)
    assert again["ppl"] == pytest.approx(report["ppl"], rel=1e-5)
    assert report["context"] == context
    assert report["eval_options"].startswith("--dynamic --dynamic-rule rms")
    table = cli("tune", checkpoint, repeat_file, "--cache", "-q").stdout
    assert "Best ppl" in table and "--cache --cache-window" in table


def test_cache_works_for_characters_in_bf16(cli, char_model, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abcabcabcabc\n" * 5, encoding="utf-8")
    static = total(cli, char_model, path, "--precision", "bf16")["ppl"]
    cached = cli.json("eval", char_model, path, "--precision", "bf16", "--cache", "--cache-lambda", "0.5")
    assert cached["total"]["ppl"] < 0.6 * static
    assert cached["adaptations"]["cache"] == {"window": 500, "theta": 0.5, "lambda": 0.5}


def test_adaptation_errors(cli, word_dataset, char_model, tmp_path, repeat_file):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset)
    result = cli("eval", checkpoint, repeat_file, "--cache-window", "5", expect=2)
    assert result.stdout == "" and "--cache-window sets --cache, which is off: add --cache" in result.stderr
    result = cli("eval", checkpoint, repeat_file, "--ngram-weight", "0.5", expect=2)
    assert "add --ngram MODEL" in result.stderr
    # the rms rule needs the training data's statistics; this checkpoint records no dataset
    result = cli("eval", checkpoint, repeat_file, "--dynamic", expect=2)
    assert "--dynamic-data DIR" in result.stderr and "--dynamic-rule sgd" in result.stderr
    assert total(cli, checkpoint, repeat_file, "--dynamic", "--dynamic-data", word_dataset)["ppl"] > 1
    tuned = cli.json("tune", checkpoint, repeat_file, "--dynamic", "--dynamic-lr", "0.01", "--dynamic-decay", "0",
                     "--dynamic-data", word_dataset, "-q")
    assert tuned["eval_options"].endswith(f"--dynamic-data {word_dataset}")
    result = cli("eval", checkpoint, repeat_file, "--dynamic", "--dynamic-data", tmp_path / "nowhere", expect=1)
    assert "no such dataset directory" in result.stderr
    result = cli("eval", char_model, repeat_file, "--ngram", tmp_path / "x.arpa", expect=2)
    assert "word-level model" in result.stderr
    backward = tiny_checkpoint(tmp_path / "b.pt", word_dataset, direction="backward")
    result = cli("eval", backward, repeat_file, "--cache", expect=2)
    assert "use a forward model" in result.stderr
    result = cli("tune", checkpoint, repeat_file, expect=2)
    assert "nothing to tune" in result.stderr


def test_a_broken_ngram_file_is_named(cli, word_dataset, tmp_path, repeat_file):
    pytest.importorskip("kenlm")
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset)
    bad = tmp_path / "bad.arpa"
    bad.write_text("this is not an n-gram model\n", encoding="utf-8")
    result = cli("eval", checkpoint, repeat_file, "--ngram", bad, expect=1)
    assert result.stdout == "" and f"{bad}: not a readable ARPA or KenLM binary n-gram model" in result.stderr
    result = cli("eval", checkpoint, repeat_file, "--ngram", tmp_path / "missing.arpa", expect=1)
    assert "missing.arpa: no such file" in result.stderr


def test_summary_table_names_the_adaptations(cli, word_dataset, tmp_path, repeat_file):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset)
    table = cli("eval", checkpoint, repeat_file, "--cache", "--dynamic", "--dynamic-rule", "sgd",
                env={"COLUMNS": "200"}).stdout
    assert "adapted: cache (window 500, theta 0.5, lambda 0.15), dynamic evaluation (sgd, lr 0.3, decay 0.002, " \
           "segment 20)" in table
    assert load_checkpoint(checkpoint).data == {}


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm"])
def test_every_cell_and_subword_models_in_both_precisions(cli, corpus, tmp_path, cell):
    """A sentencepiece model with each cell: the cache matches the formula, and all three adaptations run in fp32
    and bf16 (gradients through the bf16 forward included)."""
    data = tmp_path / "bpe"
    cli("tokenize", corpus["train"], "--kind", "bpe", "--vocab-size", "600", "--out", data, "-q")
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", data, record_dataset=True, cell=cell, layers=2)
    got = token_log10(cli, checkpoint, corpus["test"], "--cache", "--cache-window", "50", "--cache-lambda", "0.2")
    text = corpus["test"].read_text(encoding="utf-8")
    assert got == pytest.approx(reference_cache(checkpoint, text, "stream", 50, 0.5, 0.2), abs=2e-6)
    for precision in ("fp32", "bf16"):
        static = total(cli, checkpoint, corpus["test"], "--precision", precision)
        adapted = total(cli, checkpoint, corpus["test"], "--precision", precision, "--cache", "--dynamic",
                        "--dynamic-lr", "0.003")
        assert adapted["tokens"] == static["tokens"] and math.isfinite(adapted["ppl"])
        assert adapted["ppl"] < static["ppl"]


@pytest.mark.parametrize("window", [1, 3, 40])
def test_cache_chunks_and_memory_do_not_change_the_answer(monkeypatch, window):
    """The cache computed in small chunks of queries, after a memory of earlier positions, equals one pass."""
    from rnnlm_cli.scoring import adapt

    torch.manual_seed(0)
    states, tokens = torch.randn(2, 60, 5), torch.randint(0, 4, (2, 60))
    whole = adapt.cache_probabilities(states, tokens, states, tokens, window, 0.7)
    monkeypatch.setattr(adapt, "CACHE_SCORES_AT_ONCE", 30)
    chunked = adapt.cache_probabilities(states, tokens, states, tokens, window, 0.7)
    memory = 25  # the first 25 positions as memory, the rest as queries
    after = adapt.cache_probabilities(states[:, memory:], tokens[:, memory:], states, tokens, window, 0.7)
    for got in (chunked, (torch.cat([whole[0][:, :memory], after[0]], 1), torch.cat([whole[1][:, :memory],
                                                                                       after[1]], 1))):
        assert torch.allclose(got[0], whole[0], atol=1e-6) and torch.equal(got[1], whole[1])
    assert not whole[1][:, 0].any() and whole[1][:, 1:].all()


def test_dynamic_evaluation_runs_in_fp32_when_bf16_is_asked(cli, word_dataset, tmp_path, repeat_file):
    """Its steps are far below bf16's resolution, so it would adapt almost nothing in bf16 products."""
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", word_dataset, record_dataset=True)
    options = ["--dynamic", "--dynamic-lr", "0.01", "--cache"]
    asked = cli("eval", checkpoint, repeat_file, *options, "--precision", "bf16", "--json")
    assert "dynamic evaluation runs in fp32" in asked.stderr
    report = json.loads(asked.stdout)
    assert report["precision"] == "fp32"
    assert report["total"]["nll"] == total(cli, checkpoint, repeat_file, *options)["nll"]
    assert "runs in fp32" not in cli("eval", checkpoint, repeat_file, "--cache", "--precision", "bf16").stderr
