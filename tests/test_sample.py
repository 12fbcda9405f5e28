"""`rnnlm sample`: text on stdout only, deterministic under a seed, right for every tokenizer kind."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

from rnnlm_cli.checkpoint import Checkpoint, load_for_inference, save_checkpoint
from rnnlm_cli.config import SampleConfig
from rnnlm_cli.jobs.sample import Generator
from rnnlm_cli.model import ModelConfig, RNNLanguageModel
from rnnlm_cli.scoring import score_token_lines
from rnnlm_cli.tokenizers import WordTokenizer, train_tokenizer


def test_samples_are_deterministic_and_alone_on_stdout(cli, word_model):
    first = cli("sample", word_model, "-n", "4", "--max-tokens", "12", "--seed", "5")
    again = cli("sample", word_model, "-n", "4", "--max-tokens", "12", "--seed", "5")
    other = cli("sample", word_model, "-n", "4", "--max-tokens", "12", "--seed", "6")
    assert first.stdout == again.stdout and first.stdout != other.stdout
    assert first.stderr == ""
    lines = first.stdout.splitlines()
    assert len(lines) == 4 and all(len(line.split()) <= 12 for line in lines)


def test_without_a_seed_each_call_draws_one_and_says_which(cli, word_model):
    first = cli("sample", word_model, "-n", "4", "--max-tokens", "12")
    seed = int(re.fullmatch(r"seed (\d+) \(--seed \1 repeats these samples\)\n", first.stderr).group(1))
    assert cli("sample", word_model, "-n", "4", "--max-tokens", "12", "--seed", str(seed)).stdout == first.stdout
    drawn = [json.loads(line)["seed"] for line in cli("sample", word_model, "-n", "2", "--json").stdout.splitlines()]
    assert len(drawn) == 2 and drawn[0] == drawn[1]  # the call's one seed, in every line
    assert "seed" not in cli("sample", word_model, "--greedy").stderr  # nothing random to repeat


def test_prompts_are_continued(cli, word_model):
    result = cli("sample", word_model, "--prompt", "Tom gave the", "--prompt", "On Sunday ,", "-n", "2")
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert all(line.startswith("Tom gave the") for line in lines[:2])
    assert all(line.startswith("On Sunday ,") for line in lines[2:])


def test_greedy_equals_temperature_zero_and_top_k_one(cli, word_model):
    zero = cli("sample", word_model, "--prompt", "Tom", "--temperature", "0", "-n", "3", "--seed", "1").stdout
    top1 = cli("sample", word_model, "--prompt", "Tom", "--top-k", "1", "-n", "3", "--seed", "9").stdout
    greedy = cli("sample", word_model, "--prompt", "Tom", "--greedy", "-n", "3", "--seed", "4").stdout
    assert greedy == zero == top1 and len(set(greedy.splitlines())) == 1


def _logprob_by_eval(cli, checkpoint, prompt: str, text: str, tmp_path) -> float:
    """log P(continuation | prompt) from `rnnlm eval`: the line's total minus the prompt's own tokens."""
    text_file = tmp_path / "sample.txt"
    text_file.write_text(text + "\n", encoding="utf-8")
    whole = cli.json("eval", checkpoint, text_file, "--context", "line")["total"]["nll"]
    model, tokenizer, _ = load_for_inference(checkpoint)
    prompt_ids = tokenizer.encode(prompt).ids
    prompt_nll = float(score_token_lines(model, [prompt_ids + [tokenizer.eos_id]], tokenizer.eos_id,
                                         "line")[0][: len(prompt_ids)].sum())
    return -(whole - prompt_nll)


def test_beam_search_returns_the_n_best_with_the_log_probabilities_eval_gives(cli, word_model, tmp_path):
    result = cli("sample", word_model, "--prompt", "Mary", "--beam-size", "4", "--json")
    beams = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(beams) == 4 and result.stderr == ""
    assert len({item["text"] for item in beams}) == 4
    logprobs = [item["logprob"] for item in beams]
    assert logprobs == sorted(logprobs, reverse=True)
    for item in beams:
        assert item["text"].startswith("Mary")
        assert item["logprob"] == pytest.approx(_logprob_by_eval(cli, word_model, "Mary", item["text"], tmp_path),
                                                abs=1e-3)
    # the best of four is at least as probable as the best of one
    single = json.loads(cli("sample", word_model, "--prompt", "Mary", "--beam-size", "1", "--json").stdout)
    assert beams[0]["logprob"] >= single["logprob"] - 1e-9


def test_beam_width_one_equals_greedy(cli, word_model):
    prompts = ["--prompt", "Tom", "--prompt", "On Sunday ,", "--prompt", ""]
    beam = cli("sample", word_model, *prompts, "--beam-size", "1", "--json").stdout.splitlines()
    greedy = cli("sample", word_model, *prompts, "--greedy", "--json").stdout.splitlines()
    assert len(beam) == 3
    for one, other in zip(map(json.loads, beam), map(json.loads, greedy)):
        assert one["text"] == other["text"] and one["tokens"] == other["tokens"]
        assert one["logprob"] == pytest.approx(other["logprob"], abs=1e-6)


def _fixed_distribution_model(path, probabilities: dict[str, float]):
    """A word model whose next-token distribution is ``probabilities`` whatever came before."""
    tokenizer = WordTokenizer(["<unk>", "<eos>", *probabilities], lowercase=False)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, cell="rnn_tanh", emb_size=4, hidden_size=4, layers=1,
                         dropout=0.0)
    model = RNNLanguageModel(config)
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_(torch.tensor([-40.0, -40.0, *map(math.log, probabilities.values())]))
    save_checkpoint(Checkpoint(config, model.state_dict(), tokenizer.to_dict()), path)
    return path


@pytest.mark.parametrize("options, allowed", [
    (["--top-p", "0.85"], {"a", "b", "c"}),  # 0.5 + 0.3 < 0.85: c is still needed; 0.95 >= 0.85: d is not
    (["--top-p", "0.75"], {"a", "b"}),
    (["--top-p", "0.4"], {"a"}),  # the most likely token always stays
    (["--top-k", "2"], {"a", "b"}),
    (["--top-k", "3", "--top-p", "0.7"], {"a", "b"}),
    ([], {"a", "b", "c", "d"}),
])
def test_top_k_and_top_p_cuts_on_a_known_distribution(cli, tmp_path, options, allowed):
    checkpoint = _fixed_distribution_model(tmp_path / "fixed.pt", {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05})
    result = cli("sample", checkpoint, "-n", "600", "--max-tokens", "1", "--no-stop-at-eos", "--seed", "3",
                 *options)
    counts = Counter(result.stdout.split())
    assert set(counts) == allowed and sum(counts.values()) == 600
    # what survives the cut keeps its relative weights: a is 0.5 / 0.8 of {a, b} and 0.5 / 0.95 of {a, b, c}
    kept = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}
    total = sum(kept[token] for token in allowed)
    for token in allowed:
        assert counts[token] / 600 == pytest.approx(kept[token] / total, abs=0.06)


def test_prompts_from_a_file_or_stdin_keep_their_order(cli, word_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tom gave the\n\nOn Sunday ,\n", encoding="utf-8")
    from_file = cli("sample", word_model, "--prompts-from", prompts, "-n", "2", "--seed", "2")
    from_stdin = cli("sample", word_model, "--prompts-from", "-", "-n", "2", "--seed", "2",
                     input=prompts.read_text(encoding="utf-8"))
    assert from_file.stdout == from_stdin.stdout
    lines = from_file.stdout.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("Tom gave the") and lines[1].startswith("Tom gave the")
    assert lines[4].startswith("On Sunday ,") and lines[5].startswith("On Sunday ,")
    # batches smaller than the call (one prompt each here) give the same output
    small = cli("sample", word_model, "--prompts-from", prompts, "-n", "2", "--batch-size", "2", "--greedy")
    large = cli("sample", word_model, "--prompts-from", prompts, "-n", "2", "--greedy")
    assert small.stdout == large.stdout and len(small.stdout.splitlines()) == 6


@pytest.mark.parametrize("model_name", ["word_model", "char_model"])
def test_streamed_output_is_the_same_text(cli, request, model_name):
    checkpoint = request.getfixturevalue(model_name)
    options = ["--prompt", "Tom", "--prompt", "花は", "-n", "3", "--max-tokens", "30", "--seed", "8"]
    streamed = cli("sample", checkpoint, *options, "--stream")
    plain = cli("sample", checkpoint, *options, "--no-stream")
    assert streamed.stdout == plain.stdout and streamed.stderr == plain.stderr


def test_samples_grow_token_by_token_while_generated(word_model):
    updates = []
    generator = Generator(SampleConfig(checkpoint=str(word_model), prompts=["Tom"], num_samples=2,
                                       max_tokens=8, stop_at_eos=False, seed=1))
    samples = list(generator.samples(["Tom"], on_text=lambda *update: updates.append(update)))
    for index, item in enumerate(samples):
        texts = [text for i, text, _ in updates if i == index]
        # an update per token that changes the text (a trailing end of line shows once something follows it)
        assert 5 <= len(texts) <= 8 and texts[-1] == item.text and texts[0].startswith("Tom")
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
        flags = [complete for i, _, complete in updates if i == index]
        assert flags[-1] and not any(flags[:-1])


def test_json_lines_with_log_probabilities(cli, word_model, tmp_path):
    result = cli("sample", word_model, "--prompt", "Mary", "-n", "3", "--json", "--seed", "0")
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
    result = cli("sample", word_model, "--prompt", "zyzzyva Tom", "--prompt", "qwxyz", "-n", "2")
    assert result.stderr.count("warning:") == 1 and "<unk>" in result.stderr and "zyzzyva" in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("zyzzyva Tom") for line in lines[:2])
    assert all(line.startswith("qwxyz") for line in lines[2:])


def test_character_samples_are_separated_by_a_blank_line(cli, char_model):
    result = cli("sample", char_model, "-n", "3", "--max-tokens", "80", "--prompt", "花は", "--seed", "0")
    samples = result.stdout.rstrip("\n").split("\n\n")
    assert len(samples) == 3 and all(sample.startswith("花は") for sample in samples)
    assert all(len(sample) == 80 + 2 for sample in samples)  # no stop at the line end for char models


def test_subword_sample_continues_japanese_without_spaces(cli, corpus, tmp_path):
    cli("tokenize", corpus["train"], "--valid", corpus["valid"], "--kind", "unigram", "--out", tmp_path / "d", "-q")
    cli("train", tmp_path / "d", "--out", tmp_path / "sp.pt", *TINY_MODEL, "--epochs", "2", "--optimizer", "adam",
        "--lr", "0.01", "-q")
    result = cli("sample", tmp_path / "sp.pt", "--prompt", "太郎は", "--prompt", "Tom", "-n", "3", "--json")
    _, tokenizer, _ = load_for_inference(tmp_path / "sp.pt")
    items = [json.loads(line) for line in result.stdout.splitlines()]
    assert [item["prompt"] for item in items] == ["太郎は"] * 3 + ["Tom"] * 3
    for item in items:
        assert item["text"].startswith(item["prompt"]) and math.isfinite(item["logprob"])
        # sentencepiece's word boundaries become spaces: no "▁" is left, and the text reads back as its tokens
        assert "▁" not in item["text"] and "\n" not in item["text"]
        assert tokenizer.decode(tokenizer.encode(item["text"]).ids) == item["text"]


@pytest.mark.parametrize("options, message", [
    (["--temperature", "-1"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "-2"], "--top-k"),
    (["--beam-size", "3", "--top-k", "5"], "--top-k"),
    (["--beam-size", "3", "-n", "2"], "--num-samples"),
    (["--beam-size", "3", "--stream"], "--stream"),
    (["--stream", "--json"], "--json"),
    (["--prompt", "a", "--prompts-from", "-"], "not both"),
    (["--device", "tpu"], ""),
])
def test_sample_usage_errors(cli, word_model, options, message):
    result = cli("sample", word_model, *options, expect=2)
    assert result.stdout == "" and message in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def invalid_byte_model(corpus, tmp_path_factory) -> Path:
    """A unigram (byte-fallback) model whose output prefers, whatever came before, bytes that cannot start or
    continue a character (continuation bytes, C0, FF), then lead bytes of 2-4 byte characters, then the rest."""
    path = tmp_path_factory.mktemp("bytes") / "bytes.pt"
    tokenizer = train_tokenizer("unigram", corpus["train"].read_text(encoding="utf-8").splitlines(), 1000)
    values = tokenizer.byte_values()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, cell="gru", emb_size=8, hidden_size=8, layers=1, dropout=0)
    torch.manual_seed(0)
    model = RNNLanguageModel(config)
    bias = torch.zeros(tokenizer.vocab_size)
    for token, byte in enumerate(values):
        if 0x80 <= byte <= 0xBF or byte in (0xC0, 0xC1, 0xF5, 0xFF):
            bias[token] = 12.0
        elif byte >= 0xC2:
            bias[token] = 6.0 + (byte % 3)
    with torch.no_grad():
        model.decoder.weight.mul_(0.1)
        model.decoder.bias.copy_(bias)
    save_checkpoint(Checkpoint(config, model.state_dict(), tokenizer.to_dict()), path)
    return path


@pytest.mark.parametrize("options", [
    ["-n", "4", "--seed", "1"], ["-n", "4", "--seed", "2", "--temperature", "2"], ["-n", "3", "--top-k", "5"],
    ["-n", "3", "--top-p", "0.9", "--seed", "4"], ["--greedy"], ["--beam-size", "4"], ["-n", "3", "--stream"],
])
@pytest.mark.parametrize("max_tokens", ["1", "2", "3", "8", "40"])
def test_byte_fallback_samples_are_valid_utf8_whatever_the_model_prefers(cli, invalid_byte_model, options,
                                                                         max_tokens):
    result = cli("sample", invalid_byte_model, "--prompt", "花は", "--max-tokens", max_tokens, *options)
    text = result.stdout_bytes.decode("utf-8")  # strict: raises on invalid UTF-8
    assert "\ufffd" not in text and text.count("花は") >= 1
    assert len(text.replace("花は", "").strip()) >= 1  # something was generated: characters of 2-4 bytes


def test_byte_fallback_log_probabilities_are_the_models_own(invalid_byte_model):
    """The constraint changes which token is drawn, never the log-probability reported for it."""
    checkpoint = invalid_byte_model
    model, tokenizer, _ = load_for_inference(checkpoint)
    # unconstrained, the model's first choice after the prompt is a byte no character starts with
    prompt = tokenizer.encode("花は").ids
    with torch.no_grad():
        output, _ = model(torch.tensor([[tokenizer.eos_id, *prompt]]))
    first = int(output[0, -1].argmax())
    assert 0x80 <= tokenizer.byte_values()[first] <= 0xBF or tokenizer.byte_values()[first] >= 0xC0
    for options in ({"num_samples": 3, "seed": 5}, {"greedy": True}, {"beam_size": 3}):
        generator = Generator(SampleConfig(str(checkpoint), prompts=["花は"], max_tokens=9, **options))
        for item in generator.samples(["花は"]):
            assert item.ids and item.text.encode("utf-8").decode("utf-8") == item.text and "\ufffd" not in item.text
            ids = torch.tensor([[tokenizer.eos_id, *prompt, *item.ids]])
            with torch.no_grad():
                output, _ = model(ids[:, :-1])
            log_probs = torch.log_softmax(output[0, -len(item.ids):].double(), dim=-1)
            expected = float(log_probs.gather(1, torch.tensor(item.ids)[:, None]).sum())
            assert item.logprob == pytest.approx(expected, abs=1e-4)
