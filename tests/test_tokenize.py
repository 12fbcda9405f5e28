"""`rnnlm tokenize` and the tokenizers behind it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from rnnlm_cli.data import Dataset
from rnnlm_cli.tokenizers import EOS_ID, UNK_ID, tokenizer_from_dict, train_tokenizer

ENGLISH = ["the cat sat on the mat .", "the dog sat on the log .", "a cat and a dog ."]
JAPANESE = ["猫は公園で魚を食べました。", "今日は天気がいいです。", "犬と猫は庭で遊んでいます。"]


def decode_split(dataset: Dataset, split: str) -> list[str]:
    """The split's id array turned back into lines of text."""
    ids = np.asarray(dataset.ids(split)).tolist()
    return dataset.tokenizer.decode(ids).split("\n")[:-1]


@pytest.mark.parametrize("kind", ["word", "char", "bpe", "unigram"])
def test_cli_round_trip_for_every_kind(cli, corpus, tmp_path, kind):
    out = tmp_path / kind
    # default vocabulary sizes: for sentencepiece a soft 8000 that a small corpus may not reach
    result = cli("tokenize", corpus["train"], "--valid", corpus["valid"], "--out", out, "--kind", kind)
    assert result.stdout == ""
    assert kind in result.stderr and "train" in result.stderr  # the summary table goes to stderr

    dataset = Dataset(out)
    train_lines = corpus["train"].read_text(encoding="utf-8").splitlines()
    valid_lines = corpus["valid"].read_text(encoding="utf-8").splitlines()
    assert any("は" in line for line in train_lines)  # the corpus really holds Japanese
    if kind == "word":
        # whitespace splitting normalises runs of spaces only
        assert decode_split(dataset, "train") == [" ".join(line.split()) for line in train_lines]
    else:
        assert decode_split(dataset, "train") == train_lines
    meta = json.loads((out / "meta.json").read_text())
    if kind == "char":
        # characters never seen in train come back as U+FFFD, one per OOV
        decoded = decode_split(dataset, "valid")
        assert sum(line.count("\ufffd") for line in decoded) == meta["splits"]["valid"]["oov"] > 0
        assert [line.replace("\ufffd", "") for line in decoded] != valid_lines
    elif kind != "word":
        assert decode_split(dataset, "valid") == valid_lines
        assert meta["splits"]["valid"]["oov"] == 0
    assert meta["splits"]["train"]["lines"] == len(train_lines)
    assert meta["splits"]["train"]["tokens"] == len(dataset.ids("train"))
    assert np.count_nonzero(np.asarray(dataset.ids("train")) == EOS_ID) == len(train_lines)
    assert set(meta["splits"]) == {"train", "valid"}
    assert not list(out.glob("*.tmp")) and not list(tmp_path.glob("*.model"))


def test_word_vocabulary_comes_from_train_only(cli, tmp_path):
    train = tmp_path / "train.txt"
    valid = tmp_path / "valid.txt"
    train.write_text("a b b c c c\nc b\n", encoding="utf-8")
    valid.write_text("c zebra a\nzebra\n", encoding="utf-8")
    summary = cli.json("tokenize", train, "--valid", valid, "--out", tmp_path / "d")
    dataset = Dataset(tmp_path / "d")
    # specials first, then by frequency: c (4), b (3), a (1)
    assert dataset.tokenizer.tokens == ["<unk>", "<eos>", "c", "b", "a"]
    assert np.asarray(dataset.ids("valid")).tolist() == [2, UNK_ID, 4, EOS_ID, UNK_ID, EOS_ID]
    valid_summary = next(s for s in summary["splits"] if s["split"] == "valid")
    assert valid_summary["oov"] == 2 and valid_summary["tokens"] == 6
    assert valid_summary["oov_rate"] == pytest.approx(2 / 4)
    assert summary["vocab_size"] == 5 and summary["dtype"] == "uint16"


def test_min_freq_vocab_size_and_lowercase(tmp_path):
    lines = ["The the THE cat", "the cat dog"]
    tokenizer = train_tokenizer("word", lines, min_freq=2, lowercase=True)
    assert tokenizer.tokens == ["<unk>", "<eos>", "the", "cat"]
    assert tokenizer.encode("THE Dog").ids == [2, UNK_ID] and tokenizer.encode("THE Dog").oov == 1
    assert train_tokenizer("word", lines, vocab_size=3).tokens == ["<unk>", "<eos>", "the"]


def test_literal_unk_in_text_is_the_unknown_token_not_an_oov():
    tokenizer = train_tokenizer("word", ["a <unk> b", "<unk> a"])
    encoded = tokenizer.encode("<unk> a zzz")
    assert encoded.ids == [UNK_ID, tokenizer.tokens.index("a"), UNK_ID]
    assert encoded.oov == 1


@pytest.mark.parametrize("kind", ["char", "bpe", "unigram"])
def test_japanese_without_spaces_round_trips(kind):
    tokenizer = train_tokenizer(kind, (ENGLISH + JAPANESE) * 20, vocab_size=300 if kind != "char" else None)
    for line in ENGLISH + JAPANESE:
        encoded = tokenizer.encode(line)
        assert encoded.oov == 0
        assert tokenizer.decode(encoded.ids) == line
    # text never seen in training: sentencepiece falls back to bytes, so nothing is unknown
    unseen = "東京タワー😀"
    if kind == "char":
        assert tokenizer.encode(unseen).oov == len(unseen)
    else:
        assert tokenizer.encode(unseen).oov == 0
        assert tokenizer.decode(tokenizer.encode(unseen).ids) == unseen


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_tokenizer_serialises_to_plain_data(kind):
    tokenizer = train_tokenizer(kind, (ENGLISH + JAPANESE) * 20, vocab_size=300 if kind == "bpe" else None)
    copy = tokenizer_from_dict(tokenizer.to_dict())
    for line in ENGLISH + JAPANESE:
        assert copy.encode(line) == tokenizer.encode(line)
    assert copy.vocab_size == tokenizer.vocab_size


def test_tokenize_reads_stdin_and_prints_json(cli, tmp_path):
    text = "one two three\ntwo three\nthree\n"
    result = cli("tokenize", "-", "--out", tmp_path / "d", "--json", input=text)
    summary = json.loads(result.stdout)
    assert result.stderr == ""
    assert summary["splits"][0]["source"] == "-"
    assert summary["splits"][0]["lines"] == 3 and summary["splits"][0]["tokens"] == 9
    assert summary["vocab_size"] == 5


def test_large_vocabulary_uses_uint32(tmp_path):
    from rnnlm_cli.config import TokenizeConfig
    from rnnlm_cli.jobs.tokenize import tokenize_corpus

    train = tmp_path / "train.txt"
    train.write_text(" ".join(f"w{i}" for i in range(70_000)) + "\n", encoding="utf-8")
    summary = tokenize_corpus(TokenizeConfig(train=str(train), out=str(tmp_path / "d")))
    assert summary.dtype == "uint32" and summary.vocab_size == 70_002
    ids = Dataset(tmp_path / "d").ids("train")
    assert ids.dtype.itemsize == 4 and int(ids[-2]) == 70_001


def test_tokenize_errors_are_one_line(cli, tmp_path):
    missing = cli("tokenize", tmp_path / "nope.txt", "--out", tmp_path / "d", expect=1)
    assert missing.stdout == ""
    assert missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    result = cli("tokenize", bad, "--out", tmp_path / "d", expect=1)
    assert "line 2: not valid UTF-8" in result.stderr and "Traceback" not in result.stderr

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    good = tmp_path / "good.txt"
    good.write_text("a b\n")
    result = cli("tokenize", good, "--out", occupied, expect=1)
    assert "not empty" in result.stderr and (occupied / "notes.txt").read_text() == "keep me"

    result = cli("tokenize", good, "--out", tmp_path / "d", "--kind", "klingon", expect=2)
    assert result.stdout == ""


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def test_an_existing_dataset_is_replaced_only_with_force_and_never_half_written(cli, tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("a b c\nb c\n", encoding="utf-8")
    second.write_text("x y\ny z w\n", encoding="utf-8")
    out = tmp_path / "data"
    cli("tokenize", first, "--out", out, "-q")
    before = _tree(out)

    refused = cli("tokenize", second, "--out", out, expect=1)
    assert "--force" in refused.stderr and refused.stderr.count("\n") == 1 and refused.stdout == ""
    assert _tree(out) == before

    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"fine\n\xff\n")
    failed = cli("tokenize", second, "--test", broken, "--out", out, "--force", expect=1)
    assert "not valid UTF-8" in failed.stderr
    assert _tree(out) == before  # the failed run changed nothing and left nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.txt", "data", "first.txt", "second.txt"]

    cli("tokenize", second, "--out", out, "--force", "-q")
    assert Dataset(out).tokenizer.vocab_size == 2 + 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.txt", "data", "first.txt", "second.txt"]


def test_an_output_path_that_cannot_be_written_is_one_line(cli, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a b\n", encoding="utf-8")
    result = cli("tokenize", good, "--out", good / "data", expect=1)  # under a file
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "cannot write" in result.stderr
    assert "Traceback" not in result.stderr and good.read_text(encoding="utf-8") == "a b\n"


def test_invalid_utf8_names_the_line_or_is_replaced_on_request(cli, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a b\nc \xff d\ne\n")
    strict = cli("tokenize", bad, "--out", tmp_path / "d", expect=1)
    assert "bad.txt, line 2: not valid UTF-8" in strict.stderr and "--encoding-errors replace" in strict.stderr
    assert not (tmp_path / "d").exists()
    summary = cli.json("tokenize", bad, "--out", tmp_path / "d", "--encoding-errors", "replace")
    assert summary["splits"][0]["lines"] == 3 and summary["splits"][0]["tokens"] == 2 + 3 + 1 + 3
    assert "\ufffd" in Dataset(tmp_path / "d").tokenizer.tokens


@pytest.mark.parametrize("content, lines, tokens", [
    (b"a\x00b c\nd\n", 2, 5),  # NUL is a character like any other
    (b"\xef\xbb\xbfa b\r\nc\r\n", 2, 5),  # a BOM and CRLF endings are handled transparently
    (b"w " * 25_000_000 + b"\n", 1, 25_000_001),  # one 50 MB line
])
def test_awkward_but_valid_text(cli, tmp_path, content, lines, tokens):
    text = tmp_path / "t.txt"
    text.write_bytes(content)
    summary = cli.json("tokenize", text, "--out", tmp_path / "d")
    assert summary["splits"][0]["lines"] == lines and summary["splits"][0]["tokens"] == tokens


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_or_blank_training_text_is_one_line(cli, tmp_path, content):
    text = tmp_path / "t.txt"
    text.write_bytes(content)
    result = cli("tokenize", text, "--out", tmp_path / "d", expect=1)
    assert "empty" in result.stderr and result.stderr.count("\n") == 1 and not (tmp_path / "d").exists()


def test_training_text_from_stdin_is_read_twice_through_a_copy_that_is_removed(cli, tmp_path):
    text = "b a\r\nc a b\n"
    (tmp_path / "valid.txt").write_text("a c\n", encoding="utf-8")
    summary = cli.json("tokenize", "-", "--valid", tmp_path / "valid.txt", "--out", tmp_path / "d", input=text)
    train = summary["splits"][0]
    assert train["source"] == "-" and train["lines"] == 2 and train["tokens"] == 7
    assert train["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["meta.json", "tokenizer.json", "train.ids",
                                                                   "valid.ids"]
    assert decode_split(Dataset(tmp_path / "d"), "train") == ["b a", "c a b"]
    both = cli("tokenize", "-", "--valid", "-", "--out", tmp_path / "e", input=text, expect=2)
    assert "can feed only one" in both.stderr and not (tmp_path / "e").exists()


def test_a_training_file_that_changes_between_the_two_readings_is_refused(cli, tmp_path, monkeypatch):
    import rnnlm_cli.jobs.tokenize as data

    train = tmp_path / "train.txt"
    train.write_text("a b\nb c\n", encoding="utf-8")

    def build_then_append(*args, **kwargs):
        tokenizer = train_tokenizer(*args, **kwargs)
        with open(train, "a", encoding="utf-8") as file:
            file.write("d e\n")
        return tokenizer

    monkeypatch.setattr(data, "train_tokenizer", build_then_append)
    result = cli("tokenize", train, "--out", tmp_path / "d", expect=1)
    assert "changed while it was being tokenized" in result.stderr and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == [train]  # no dataset, no build directory


@pytest.mark.parametrize(("kind", "jobs"), [("word", 1), ("bpe", 1), ("word", 2)])
def test_tokenizing_streams_the_text_instead_of_holding_it(tmp_path, monkeypatch, kind, jobs):
    """Python's peak allocations while tokenizing stay well below the size of the file: it is never held whole
    (with worker processes too: at most two chunks per worker are in flight)."""
    import tracemalloc

    import rnnlm_cli.jobs.tokenize as data
    from rnnlm_cli.config import TokenizeConfig

    monkeypatch.setattr(data, "_ENCODE_CHUNK_LINES", 200)  # lines encoded at a time (10,000 in use)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    train = tmp_path / "train.txt"
    with open(train, "w", encoding="utf-8") as file:
        for _ in range(60_000):  # short lines: held as a list they would cost more than the file's size
            file.write(" ".join(rng.choice(words, 6)) + "\n")
    size = train.stat().st_size
    tracemalloc.start()
    try:
        summary = data.tokenize_corpus(TokenizeConfig(train=str(train), out=str(tmp_path / "d"), kind=kind,
                                                      vocab_size=300 if kind == "bpe" else None, jobs=jobs))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.splits[0].lines == 60_000
    if kind == "word":
        assert summary.splits[0].tokens == 60_000 * 7
    # the lines as a list of str would take about 2.7x the file's size; streaming, a fraction
    assert peak < size / 2, f"peak {peak:,} bytes of Python allocations for a {size:,}-byte file"


def test_vocabulary_sizes_the_corpus_cannot_support(cli, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat\nthe dog sat\n", encoding="utf-8")
    too_small = cli("tokenize", text, "--out", tmp_path / "a", "--vocab-size", "2", expect=2)
    assert "--vocab-size" in too_small.stderr and "equal to 3" in too_small.stderr and not (tmp_path / "a").exists()
    # word level: the vocabulary is what the text holds (2 specials + 4 words), with no complaint
    words = cli("tokenize", text, "--out", tmp_path / "w", "--vocab-size", "1000", "--json")
    assert json.loads(words.stdout)["vocab_size"] == 6 and words.stderr == ""
    # sentencepiece: a smaller vocabulary than asked for, and one warning line saying so
    pieces = cli("tokenize", text, "--out", tmp_path / "b", "--kind", "bpe", "--vocab-size", "5000", "--json")
    vocab = json.loads(pieces.stdout)["vocab_size"]
    assert vocab < 5000 and f"supports only {vocab} bpe pieces, not the 5000 asked for" in pieces.stderr
    assert pieces.stderr.count("\n") == 1


@pytest.mark.parametrize("kind", ["word", "unigram"])
def test_encoding_with_several_processes_writes_the_same_dataset(cli, corpus, tmp_path, monkeypatch, kind):
    import rnnlm_cli.jobs.tokenize as data

    monkeypatch.setattr(data, "_ENCODE_CHUNK_LINES", 40)  # 300 training lines: 8 chunks among the workers
    options = ["--valid", corpus["valid"], "--kind", kind, "-q"] + (["--vocab-size", "600"] if kind != "word" else [])
    for jobs in ("1", "2"):
        cli("tokenize", corpus["train"], "--out", tmp_path / jobs, "--jobs", jobs, *options)
    for name in ("train.ids", "valid.ids", "tokenizer.json", "meta.json"):
        one, two = (tmp_path / "1" / name).read_bytes(), (tmp_path / "2" / name).read_bytes()
        assert one == two if name != "meta.json" else json.loads(one)["splits"] == json.loads(two)["splits"], name
    assert Dataset(tmp_path / "2").split_info("train")["lines"] == 300
    # a reading error in a later chunk stops the workers and leaves nothing behind
    bad = tmp_path / "bad.txt"
    bad.write_bytes(corpus["train"].read_bytes() + b"caf\xe9\n")
    result = cli("tokenize", bad, "--out", tmp_path / "x", "--jobs", "2", expect=1)
    assert "line 301" in result.stderr and result.stderr.count("\n") == 1 and not (tmp_path / "x").exists()
    assert cli("tokenize", bad, "--out", tmp_path / "y", "--jobs", "0", expect=2).stdout == ""


def _many_characters_text(path: Path, distinct: int = 1500, lines: int = 2000) -> list[str]:
    """Japanese-like lines over ``distinct`` CJK characters with Zipf-like frequencies, no spaces."""
    rng = np.random.default_rng(7)
    alphabet = [chr(0x4E00 + i) for i in range(distinct)]
    weights = 1.0 / np.arange(1, distinct + 1)
    weights /= weights.sum()
    text = ["".join(rng.choice(alphabet, size=int(rng.integers(10, 40)), p=weights)) + "。" for _ in range(lines)]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return text


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_a_vocabulary_smaller_than_the_characters_keeps_the_most_frequent_and_says_so(cli, tmp_path, kind):
    train = tmp_path / "ja.txt"
    lines = _many_characters_text(train)
    result = cli("tokenize", train, "--kind", kind, "--vocab-size", "1000", "--out", tmp_path / "d", "--json")
    assert json.loads(result.stdout)["vocab_size"] <= 1000
    warning = [line for line in result.stderr.splitlines() if "distinct characters" in line]
    assert len(warning) == 1
    distinct = len(set("".join(lines)))
    assert f"has {distinct:,} distinct characters" in warning[0] and "--vocab-size" in warning[0]
    needed = int(warning[0].rsplit("--vocab-size ", 1)[1].split()[0])
    assert needed > 1000 + 258  # what keeping 99.95% of the characters would take
    assert "sentencepiece" not in result.stderr and "character_coverage" not in result.stderr
    tokenizer = Dataset(tmp_path / "d").tokenizer
    assert all(tokenizer.decode(tokenizer.encode(line).ids) == line for line in lines[:200])
    # the suggested size keeps them all, without a word on stderr
    quiet = cli("tokenize", train, "--kind", kind, "--vocab-size", str(needed), "--out", tmp_path / "e", "-q")
    assert "distinct characters" not in quiet.stderr


def test_a_coverage_below_what_sentencepiece_takes_is_emulated(cli, tmp_path):
    train = tmp_path / "ja.txt"
    lines = _many_characters_text(train, distinct=600, lines=1500)
    pieces = {}
    for coverage in ("0.9", "1.0"):
        out = tmp_path / coverage
        result = cli("tokenize", train, "--kind", "unigram", "--vocab-size", "1000", "--character-coverage", coverage,
                     "--out", out, "-q")
        assert "distinct characters" not in result.stderr  # 600 characters fit in 1,000 pieces
        tokenizer = Dataset(out).tokenizer
        assert all(tokenizer.decode(tokenizer.encode(line).ids) == line for line in lines[:200])
        pieces[coverage] = {tokenizer.piece(i) for i in range(tokenizer.vocab_size)
                            if len(tokenizer.piece(i)) == 1 and "\u4e00" <= tokenizer.piece(i) <= "\u9fff"}
    assert len(pieces["0.9"]) < len(pieces["1.0"])  # the rarest characters are left to bytes
    too_small = cli("tokenize", train, "--kind", "bpe", "--vocab-size", "200", "--out", tmp_path / "f", expect=2)
    assert "258 ids" in too_small.stderr and too_small.stdout == ""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_encoding_workers_end_with_their_parent_even_after_kill_9(tmp_path):
    import subprocess
    import sys
    import time

    script = """
import os, signal, multiprocessing
from concurrent.futures import ProcessPoolExecutor
from rnnlm_cli.jobs import tokenize as data
from rnnlm_cli.tokenizers import WordTokenizer
tokenizer = WordTokenizer(["<unk>", "<eos>", "a"], False)
pool = ProcessPoolExecutor(2, multiprocessing.get_context("fork"), initializer=data._start_worker,
                           initargs=(tokenizer.to_dict(), os.getpid()))
for future in [pool.submit(data._encode_in_worker, ["a a"], "uint16") for _ in range(4)]:
    future.result()
print(" ".join(str(pid) for pid in pool._processes), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    workers = [int(pid) for pid in result.stdout.split()]
    assert len(workers) == 2 and result.returncode == -9
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in workers)


def test_sigterm_leaves_no_half_built_dataset_and_a_dead_builders_folder_is_removed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    train = tmp_path / "train.txt"
    ids = np.random.default_rng(1).integers(0, 3000, size=(250_000, 8))  # several seconds of tokenizing
    train.write_text("".join(" ".join(f"w{i}" for i in row) + "\n" for row in ids.tolist()), encoding="utf-8")
    out = tmp_path / "d"
    stale = tmp_path / ".d.building-999999999"  # a process id no system hands out: its builder is gone
    stale.mkdir()
    (stale / "train.ids").write_bytes(b"x" * 100)
    process = subprocess.Popen([sys.executable, "-m", "rnnlm_cli", "tokenize", str(train), "--out", str(out),
                                "--kind", "bpe", "--vocab-size", "2000", "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(f".d.building-{process.pid}")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # while it builds: the handler is in place before the folder exists
    process.wait(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert not stale.exists()  # removed when the run started
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.txt"]  # nothing half-built left
    assert os.path.exists(train)
