"""`rnnlm sample`: text on stdout only, deterministic under a seed, right for every tokenizer kind."""

from __future__ import annotations

import json
import math

import pytest

from conftest import TINY_MODEL
from rnnlm_cli.checkpoint import load_for_inference
from rnnlm_cli.evaluate import score_token_lines


def test_samples_are_deterministic_and_alone_on_stdout(cli, word_model):
    first = cli("sample", word_model, "-n", "4", "--max-tokens", "12", "--seed", "5")
    again = cli("sample", word_model, "-n", "4", "--max-tokens", "12", "--seed", "5")
    other = cli("sample", word_model, "-n", "4", "--max-tokens", "12", "--seed", "6")
    assert first.stdout == again.stdout and first.stdout != other.stdout
    assert first.stderr == ""
    lines = first.stdout.splitlines()
    assert len(lines) == 4 and all(len(line.split()) <= 12 for line in lines)


def test_prompts_are_continued(cli, word_model):
    result = cli("sample", word_model, "--prompt", "Tom gave the", "--prompt", "On Sunday ,", "-n", "2")
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert all(line.startswith("Tom gave the") for line in lines[:2])
    assert all(line.startswith("On Sunday ,") for line in lines[2:])


def test_greedy_equals_top_k_one(cli, word_model):
    greedy = cli("sample", word_model, "--prompt", "Tom", "--temperature", "0", "-n", "3", "--seed", "1").stdout
    top1 = cli("sample", word_model, "--prompt", "Tom", "--top-k", "1", "-n", "3", "--seed", "9").stdout
    assert greedy == top1 and len(set(greedy.splitlines())) == 1


def test_json_lines_with_log_probabilities(cli, word_model, tmp_path):
    result = cli("sample", word_model, "--prompt", "Mary", "-n", "3", "--json")
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(samples) == 3
    for item in samples:
        assert item["prompt"] == "Mary" and item["text"].startswith("Mary")
        assert item["tokens"] >= 1 and item["logprob"] < 0
    # a sample that ended at the line end is one line of text; its log-probability is what eval gives it
    # after the prompt: eval(prompt + continuation) - eval(prompt alone, without its end of line)
    finished = next(item for item in samples if item["tokens"] < 50)
    text_file = tmp_path / "sample.txt"
    text_file.write_text(finished["text"] + "\n", encoding="utf-8")
    whole = cli.json("eval", word_model, text_file, "--context", "line")["total"]["nll"]
    model, tokenizer, _ = load_for_inference(word_model)
    prompt_nll = float(score_token_lines(model, [tokenizer.encode("Mary").ids + [tokenizer.eos_id]],
                                         tokenizer.eos_id, "line")[0][:-1].sum())
    assert -finished["logprob"] == pytest.approx(whole - prompt_nll, rel=1e-4)


def test_unknown_prompt_words_warn_once(cli, word_model):
    result = cli("sample", word_model, "--prompt", "zyzzyva Tom", "-n", "2")
    assert result.stderr.count("warning:") == 1 and "<unk>" in result.stderr
    assert all(line.startswith("zyzzyva Tom") for line in result.stdout.splitlines())


def test_character_samples_are_separated_by_a_blank_line(cli, char_model):
    result = cli("sample", char_model, "-n", "3", "--max-tokens", "80", "--prompt", "花は")
    samples = result.stdout.rstrip("\n").split("\n\n")
    assert len(samples) == 3 and all(sample.startswith("花は") for sample in samples)
    assert all(len(sample) == 80 + 2 for sample in samples)  # no stop at the line end for char models


def test_subword_sample_continues_japanese_without_spaces(cli, corpus, tmp_path):
    cli("tokenize", corpus["train"], "--valid", corpus["valid"], "--kind", "unigram", "--out", tmp_path / "d", "-q")
    cli("train", tmp_path / "d", "--out", tmp_path / "sp.pt", *TINY_MODEL, "--epochs", "2", "--optimizer", "adam",
        "--lr", "0.01", "-q")
    result = cli("sample", tmp_path / "sp.pt", "--prompt", "太郎は", "-n", "2", "--json")
    for line in result.stdout.splitlines():
        item = json.loads(line)
        assert item["text"].startswith("太郎は") and math.isfinite(item["logprob"])


def test_sample_errors(cli, word_model):
    assert cli("sample", word_model, "--temperature", "-1", expect=2).stdout == ""
    assert cli("sample", word_model, "--device", "tpu", expect=2).stdout == ""
