"""Shared fixtures: a tiny English + Japanese corpus, a CLI runner, and one tiny trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rnnlm_cli.cli.app import app

DEMO = Path(__file__).resolve().parent.parent / "corpora" / "demo"

# tiny models keep the suite fast: a few seconds per training run on 2 CPU cores
TINY_MODEL = ["--layers", "1", "--emb-size", "24", "--hidden-size", "24", "--bptt", "12", "--batch-size", "8"]


def _head(path: Path, count: int) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()[:count]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """train / valid / test texts: the first lines of the bundled demo corpus (English and Japanese)."""
    root = tmp_path_factory.mktemp("corpus")
    files = {}
    for split, count in (("train", 300), ("valid", 40), ("test", 40)):
        files[split] = root / f"{split}.txt"
        files[split].write_text(_head(DEMO / f"{split}.txt", count), encoding="utf-8")
    return files


class Cli:
    """Runs `rnnlm ARGS...` in-process; stdout, stderr and the exit code come back separately."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, expect: int | None = 0, **invoke):
        result = self.runner.invoke(app, [str(a) for a in args], input=input, **invoke)
        if expect is not None and result.exit_code != expect:
            raise AssertionError(
                f"rnnlm {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nexception: {result.exception!r}"
            )
        return result

    def json(self, *args: str, input: str | None = None):
        result = self(*args, "--json", input=input)
        return json.loads(result.stdout)


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def word_dataset(cli, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "word"
    cli("tokenize", corpus["train"], "--valid", corpus["valid"], "--test", corpus["test"], "--out", out, "-q")
    return out


@pytest.fixture(scope="session")
def word_model(cli, word_dataset, tmp_path_factory) -> Path:
    """A tiny LSTM trained for two epochs on the word dataset."""
    checkpoint = tmp_path_factory.mktemp("models") / "word.pt"
    cli("train", word_dataset, "--out", checkpoint, *TINY_MODEL, "--epochs", "2", "--optimizer", "adam",
        "--lr", "0.01", "-q")
    return checkpoint


@pytest.fixture(scope="session")
def char_model(cli, corpus, tmp_path_factory) -> Path:
    """A tiny character-level LSTM trained for one epoch."""
    root = tmp_path_factory.mktemp("char")
    cli("tokenize", corpus["train"], "--valid", corpus["valid"], "--kind", "char", "--out", root / "d", "-q")
    cli("train", root / "d", "--out", root / "char.pt", *TINY_MODEL, "--epochs", "1", "-q")
    return root / "char.pt"
