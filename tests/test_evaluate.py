"""`rnnlm eval`: exact accounting, checked against hand arithmetic and an independent forward pass."""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnlm_cli.checkpoint import Checkpoint, load_for_inference, save_checkpoint
from rnnlm_cli.data import Dataset
from rnnlm_cli.model import ModelConfig, RNNLanguageModel
from rnnlm_cli.scoring import score_token_lines

TEXT = "the cat sat on the mat .\nTom said hi to Mary .\n猫は魚を食べました。\n\nMary gave the key to Tom .\n"


def make_checkpoint(path: Path, dataset_dir: Path, cell: str = "lstm", uniform: bool = False, layers: int = 2,
                    seed: int = 0) -> Path:
    """An untrained model over the dataset's tokenizer; ``uniform`` zeroes the output layer."""
    tokenizer = Dataset(dataset_dir).tokenizer
    torch.manual_seed(seed)
    config = ModelConfig(tokenizer.vocab_size, cell=cell, emb_size=8, hidden_size=12, layers=layers, dropout=0.0,
                         init_range=1.0)
    model = RNNLanguageModel(config)
    if uniform:
        torch.nn.init.zeros_(model.decoder.weight)
        torch.nn.init.zeros_(model.decoder.bias)
    save_checkpoint(Checkpoint(config, model.state_dict(), tokenizer.to_dict()), path)
    return path


def load_model(path: Path):
    model, tokenizer, _ = load_for_inference(path)
    return model, tokenizer


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.mark.parametrize("context", ["stream", "line"])
def test_uniform_model_perplexity_is_the_vocabulary_size(cli, word_dataset, tmp_path, text_file, context):
    checkpoint = make_checkpoint(tmp_path / "uniform.pt", word_dataset, uniform=True)
    tokenizer = Dataset(word_dataset).tokenizer
    vocab = tokenizer.vocab_size
    result = cli("eval", checkpoint, text_file, "--context", context, "--json")
    assert result.stderr == ""
    total = json.loads(result.stdout)["total"]

    lines = TEXT.splitlines()
    words = sum(len(line.split()) for line in lines) + len(lines)
    size = len(TEXT.encode("utf-8"))
    assert total["lines"] == 5 and total["words"] == words and total["bytes"] == size
    assert total["tokens"] == words  # a word model has one token per word, plus </s> per line
    unknown = [word for word in TEXT.split() if word not in tokenizer.tokens]
    assert "猫は魚を食べました。" in unknown  # a Japanese line without spaces is one unknown "word"
    assert total["oov"] == len(unknown) >= 2
    assert total["ppl"] == pytest.approx(vocab, rel=1e-6)
    # SRILM's ppl1: the whole nll (ends of sentence included) over the tokens without the 5 ends of sentence
    assert total["ppl1"] == pytest.approx(vocab ** (words / (words - 5)), rel=1e-6)
    assert total["nll"] == pytest.approx(total["tokens"] * math.log(vocab), rel=1e-6)
    assert total["word_ppl"] == pytest.approx(math.exp(total["tokens"] * math.log(vocab) / words), rel=1e-6)
    assert total["bits_per_byte"] == pytest.approx(total["tokens"] * math.log2(vocab) / size, rel=1e-6)


def _reference_nll(path: Path, lines: list[list[int]], eos: int, carry_state: bool) -> list[float]:
    """Per-token nll from an independent, one-token-at-a-time forward pass over the raw checkpoint.

    Reads the file with plain torch.load as docs/checkpoint-format.md describes and writes out the
    Elman / LSTM / GRU equations by hand (PyTorch gate order: LSTM i, f, g, o; GRU r, z, n).
    """
    raw = torch.load(path, weights_only=True)
    config, weights = raw["model_config"], {k: v.double() for k, v in raw["model"].items()}
    layers, hidden_size = config["layers"], config["hidden_size"]

    def step(x, state, layer):
        w_ih, w_hh = weights[f"rnn.weight_ih_l{layer}"], weights[f"rnn.weight_hh_l{layer}"]
        b_ih, b_hh = weights[f"rnn.bias_ih_l{layer}"], weights[f"rnn.bias_hh_l{layer}"]
        h, c = state
        if config["cell"] == "lstm":
            i, f, g, o = (w_ih @ x + b_ih + w_hh @ h + b_hh).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        if config["cell"] == "gru":
            xr, xz, xn = (w_ih @ x + b_ih).chunk(3)
            hr, hz, hn = (w_hh @ h + b_hh).chunk(3)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            return (1 - z) * n + z * h, c
        pre = w_ih @ x + b_ih + w_hh @ h + b_hh
        return (torch.tanh(pre) if config["cell"] == "rnn_tanh" else torch.relu(pre)), c

    zeros = [(torch.zeros(hidden_size, dtype=torch.float64),) * 2 for _ in range(layers)]
    states, scores = list(zeros), []
    for line in lines:
        if not carry_state:
            states = list(zeros)
        previous = eos
        for token in line:
            x = weights["embedding.weight"][previous]
            for layer in range(layers):
                states[layer] = step(x, states[layer], layer)
                x = states[layer][0]
            logits = weights["decoder.weight"] @ x + weights["decoder.bias"]
            scores.append(float(-torch.log_softmax(logits, dim=0)[token]))
            previous = token
    return scores


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_batched_evaluator_matches_a_token_by_token_loop(word_dataset, tmp_path, cell):
    checkpoint = make_checkpoint(tmp_path / f"{cell}.pt", word_dataset, cell=cell, seed=3)
    model, tokenizer = load_model(checkpoint)
    lines = [enc.ids + [tokenizer.eos_id] for enc in tokenizer.encode_many(TEXT.splitlines())]
    for context, carry in (("line", False), ("stream", True)):
        expected = _reference_nll(checkpoint, lines, tokenizer.eos_id, carry_state=carry)
        for batch_size in (1, 2, 64):
            got = torch.cat(score_token_lines(model, lines, tokenizer.eos_id, context, batch_size)).tolist()
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-5), (context, batch_size)


def test_cli_totals_match_the_reference_and_do_not_depend_on_batch_size(cli, word_dataset, tmp_path, text_file):
    checkpoint = make_checkpoint(tmp_path / "m.pt", word_dataset, seed=5)
    _model, tokenizer = load_model(checkpoint)
    lines = [enc.ids + [tokenizer.eos_id] for enc in tokenizer.encode_many(TEXT.splitlines())]
    for context, carry in (("line", False), ("stream", True)):
        expected = sum(_reference_nll(checkpoint, lines, tokenizer.eos_id, carry_state=carry))
        totals = [cli.json("eval", checkpoint, text_file, "--context", context, "--batch-size", size)["total"]
                  for size in ("1", "3", "256")]
        for total in totals:
            assert total["nll"] == pytest.approx(expected, rel=1e-5)
            assert total["tokens"] == sum(len(line) for line in lines)
        assert totals[0]["nll"] == pytest.approx(totals[2]["nll"], rel=1e-6)


def test_stream_and_line_agree_on_a_one_line_file(cli, word_dataset, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "m.pt", word_dataset, seed=7)
    one_line = tmp_path / "one.txt"
    one_line.write_text("Tom said hi to Mary .\n", encoding="utf-8")
    stream = cli.json("eval", checkpoint, one_line, "--context", "stream")["total"]
    line = cli.json("eval", checkpoint, one_line, "--context", "line")["total"]
    assert stream["nll"] == pytest.approx(line["nll"], rel=1e-6)
    assert stream["tokens"] == line["tokens"] == 7


def test_many_files_stdin_and_the_total_row(cli, word_model, corpus, text_file):
    stdin_text = corpus["valid"].read_text(encoding="utf-8")
    document = json.loads(cli("eval", word_model, corpus["test"], "-", text_file, "--json", input=stdin_text).stdout)
    names = [entry["file"] for entry in document["files"]]
    assert names == [str(corpus["test"]), "<stdin>", str(text_file)]
    total = document["total"]
    for key in ("lines", "tokens", "oov", "words", "bytes"):
        assert total[key] == sum(entry[key] for entry in document["files"])
    assert total["nll"] == pytest.approx(sum(entry["nll"] for entry in document["files"]))
    assert total["ppl"] == pytest.approx(math.exp(total["nll"] / total["tokens"]))
    # the same text from a file and from stdin scores the same
    from_file = cli.json("eval", word_model, corpus["valid"])["files"][0]
    assert document["files"][1]["nll"] == pytest.approx(from_file["nll"], rel=1e-9)

    table = cli("eval", word_model, corpus["test"], text_file)
    assert table.stderr == ""
    assert "total" in table.stdout and "ppl1" in table.stdout
    # the table names the files by what tells them apart; the folder they share is in the caption
    folder = os.path.commonpath([corpus["test"].parent, text_file.parent])
    assert f"folder {folder};" in table.stdout
    assert f" {os.path.relpath(text_file, folder)} " in table.stdout
    assert f" {os.path.relpath(corpus['test'], folder)} " in table.stdout


def test_eval_errors(cli, word_model, tmp_path):
    result = cli("eval", word_model, tmp_path / "missing.txt", expect=1)
    assert result.stdout == "" and "missing.txt: no such file" in result.stderr
    result = cli("eval", tmp_path / "nope.pt", tmp_path / "missing.txt", expect=1)
    assert "no such checkpoint" in result.stderr
    result = cli("eval", word_model, "-", "-", expect=2)
    assert "only once" in result.stderr
    result = cli("eval", word_model, expect=2)
    assert result.stdout == ""


def test_line_level_tsv_and_json_lines(cli, word_model, corpus, text_file):
    result = cli("eval", word_model, corpus["test"], text_file, "--level", "line", "--context", "line")
    assert result.stderr == ""
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0] == ["file", "line", "tokens", "oov", "log10_prob", "ppl"]
    test_lines = corpus["test"].read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + len(test_lines) + len(TEXT.splitlines())
    assert [int(row[1]) for row in rows[1:len(test_lines) + 1]] == list(range(1, len(test_lines) + 1))
    assert rows[-1][0] == str(text_file) and rows[-1][1] == "5"

    summary = cli.json("eval", word_model, corpus["test"], text_file, "--context", "line")["total"]
    assert sum(int(row[2]) for row in rows[1:]) == summary["tokens"]
    assert sum(int(row[3]) for row in rows[1:]) == summary["oov"]
    assert -sum(float(row[4]) for row in rows[1:]) * math.log(10) == pytest.approx(summary["nll"], rel=1e-6)
    for row in rows[1:]:
        assert float(row[5]) == pytest.approx(10 ** (-float(row[4]) / int(row[2])), rel=1e-6)

    jsonl = cli("eval", word_model, text_file, "--level", "line", "--json").stdout.splitlines()
    records = [json.loads(line) for line in jsonl]
    assert len(records) == 5 and set(records[0]) == {"file", "line", "tokens", "oov", "log10_prob", "ppl"}
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5] and records[3]["tokens"] == 1  # the empty line: </s>


def test_token_level_matches_the_reference_loop(cli, word_dataset, tmp_path, text_file):
    checkpoint = make_checkpoint(tmp_path / "m.pt", word_dataset, cell="gru", seed=11)
    _model, tokenizer = load_model(checkpoint)
    lines = [enc.ids + [tokenizer.eos_id] for enc in tokenizer.encode_many(TEXT.splitlines())]
    for context, carry in (("line", False), ("stream", True)):
        expected = _reference_nll(checkpoint, lines, tokenizer.eos_id, carry_state=carry)
        result = cli("eval", checkpoint, text_file, "--level", "token", "--context", context)
        rows = [line.split("\t") for line in result.stdout.splitlines()]
        assert rows[0] == ["file", "line", "position", "token", "oov", "log10_prob"]
        assert len(rows) - 1 == len(expected) == sum(len(line) for line in lines)
        got = [-float(row[5]) * math.log(10) for row in rows[1:]]
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert [row[3] for row in rows if row[1] == "1"] == ["the", "cat", "sat", "on", "the", "mat", ".", "<eos>"]
    japanese = next(row for row in rows if row[3] == "猫は魚を食べました。")
    assert japanese[4] == "1"  # unknown words keep their own text and are flagged
    assert [row[3] for row in rows if row[1] == "4"] == ["<eos>"]  # the empty line


def test_token_level_for_characters_escapes_tabs(cli, char_model, tmp_path):
    text = tmp_path / "tab.txt"
    text.write_text("a\tb c\n", encoding="utf-8")
    rows = [row.split("\t") for row in cli("eval", char_model, text, "--level", "token").stdout.splitlines()[1:]]
    assert [row[3] for row in rows] == ["a", "\\t", "b", " ", "c", "<eos>"]
    assert [row[4] for row in rows] == ["0", "1", "0", "0", "0", "0"]  # no tab in the training text


def test_exclude_oov_follows_srilm(cli, word_dataset, tmp_path, text_file):
    checkpoint = make_checkpoint(tmp_path / "m.pt", word_dataset, seed=2)
    tokenizer = Dataset(word_dataset).tokenizer
    scored = cli.json("eval", checkpoint, text_file, "--context", "line")
    excluded = cli.json("eval", checkpoint, text_file, "--context", "line", "--exclude-oov")
    assert "scored as <unk>" in scored["oov_convention"] and scored["exclude_oov"] is False
    assert "neither scored nor counted" in excluded["oov_convention"] and excluded["exclude_oov"] is True
    oov = scored["total"]["oov"]
    assert oov >= 2 and excluded["total"]["oov"] == oov
    assert excluded["total"]["tokens"] == scored["total"]["tokens"] - oov
    assert excluded["total"]["words"] == scored["total"]["words"] - oov

    tokens = cli("eval", checkpoint, text_file, "--level", "token", "--context", "line").stdout.splitlines()[1:]
    oov_nll = sum(-float(row.split("\t")[5]) * math.log(10) for row in tokens if row.split("\t")[4] == "1")
    assert excluded["total"]["nll"] == pytest.approx(scored["total"]["nll"] - oov_nll, rel=1e-6)
    assert excluded["total"]["ppl"] == pytest.approx(
        math.exp(excluded["total"]["nll"] / excluded["total"]["tokens"]), rel=1e-9)
    assert all(row.split("\t")[5] == "" for row in cli(
        "eval", checkpoint, text_file, "--level", "token", "--exclude-oov").stdout.splitlines()[1:]
        if row.split("\t")[4] == "1")
    table = cli("eval", checkpoint, text_file, "--exclude-oov").stdout
    assert "neither scored nor counted" in table
    assert len(tokenizer.tokens) == scored["tokenizer"]["vocab_size"]


def test_files_from_and_summary_tsv(cli, word_model, corpus, text_file, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{corpus['test']}\n\n{text_file}\n", encoding="utf-8")
    from_list = cli.json("eval", word_model, "--files-from", listing)
    direct = cli.json("eval", word_model, corpus["test"], text_file)
    assert from_list["files"] == direct["files"] and from_list["total"] == direct["total"]
    from_stdin = cli.json("eval", word_model, corpus["valid"], "--files-from", "-", input=listing.read_text())
    assert [f["file"] for f in from_stdin["files"]] == [str(corpus["valid"]), str(corpus["test"]), str(text_file)]

    tsv = cli("eval", word_model, "--files-from", listing, "--format", "tsv").stdout.splitlines()
    header = tsv[0].split("\t")
    assert header[:6] == ["file", "lines", "tokens", "oov", "nll", "ppl"] and len(tsv) == 4
    total = dict(zip(header, tsv[-1].split("\t")))
    assert total["file"] == "total" and float(total["ppl"]) == pytest.approx(direct["total"]["ppl"], rel=1e-8)

    missing = tmp_path / "list2.txt"
    missing.write_text(f"{text_file}\n{tmp_path / 'gone.txt'}\n", encoding="utf-8")
    result = cli("eval", word_model, "--files-from", missing, "--level", "line", expect=1)
    assert result.stdout == "" and "gone.txt: no such file" in result.stderr  # checked before any output
    assert cli("eval", word_model, "-", "--files-from", "-", expect=2).stdout == ""
    assert "not a table" in cli("eval", word_model, text_file, "--level", "line", "--format", "table",
                                expect=2).stderr


def test_bf16_precision_is_close(cli, word_model, corpus):
    exact = cli.json("eval", word_model, corpus["test"], "--context", "line")
    fast = cli.json("eval", word_model, corpus["test"], "--context", "line", "--precision", "bf16")
    assert fast["precision"] == "bf16" and exact["precision"] == "fp32"
    assert fast["total"]["ppl"] == pytest.approx(exact["total"]["ppl"], rel=2e-2)


def _rnnlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "rnnlm_cli", *map(str, args)]


def test_line_level_streams_before_the_input_ends(word_model):
    process = subprocess.Popen(_rnnlm("eval", word_model, "-", "--level", "line", "--context", "line",
                                      "--batch-size", "2"),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        process.stdin.write("Tom said hi .\nMary said hi .\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "no output within 60 s while stdin stays open"
        assert process.stdout.readline().startswith("file\t")
        assert process.stdout.readline().startswith("<stdin>\t1\t")
        process.stdin.write("Ken said hi .\n")
    finally:
        process.stdin.close()
        rest = process.stdout.read()
        process.wait(timeout=60)
    assert rest.count("<stdin>") == 2 and process.returncode == 0


def test_head_ends_quietly(word_model, corpus, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(corpus["train"].read_text(encoding="utf-8") * 30, encoding="utf-8")
    for level in ("line", "token"):
        command = " ".join(_rnnlm("eval", word_model, big, "--level", level)) + " | head -n 3"
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                                timeout=120)
        assert len(result.stdout.splitlines()) == 3
        assert result.stderr == "" and result.returncode == 0


def test_eval_encoding_errors(cli, word_model, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Tom \xff\nMary\n")
    strict = cli("eval", word_model, bad, expect=1)
    assert "bad.txt, line 1: not valid UTF-8" in strict.stderr and strict.stdout == ""
    replaced = cli.json("eval", word_model, bad, "--encoding-errors", "replace")["total"]
    assert replaced["lines"] == 2 and replaced["oov"] == 1  # the replaced word is outside the vocabulary


def test_word_ppl_of_text_without_spaces_comes_with_a_warning(cli, word_model, corpus, tmp_path):
    japanese = tmp_path / "ja.txt"
    japanese.write_text("太郎は公園でりんごを食べました。\n日曜日に花とトムは駅へ行きました。\n", encoding="utf-8")
    result = cli("eval", word_model, japanese, "--json")
    total = json.loads(result.stdout)["total"]
    assert total["words"] == 4  # each line is one "word", plus its end
    assert f"warning: {japanese} has {total['bytes'] / total['words']:.0f} bytes per space-separated word" in \
        result.stderr and "bits/byte" in result.stderr
    assert cli("eval", word_model, corpus["test"], "--json").stderr == ""  # English with Japanese: spaces enough
