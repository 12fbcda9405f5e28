from __future__ import annotations

from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import (
    EncodingErrorsOpt,
    JsonOpt,
    Kind,
    QuietOpt,
)
from rnnlm_cli.tokenizers import DEFAULT_CHARACTER_COVERAGE

NAME = "tokenize"


def command(
    train: Annotated[str, typer.Argument(metavar="TRAIN", help="Training text, one sentence per line (- for stdin). "
                                              "The vocabulary is built from this file only.", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Dataset directory to write.",
                                     show_default=False)],
    valid: Annotated[str | None, typer.Option(
        metavar="FILE", help="Validation text, encoded with the training vocabulary.")] = None,
    test: Annotated[str | None, typer.Option(
        metavar="FILE", help="Test text, encoded with the training vocabulary.")] = None,
    kind: Annotated[Kind, typer.Option(help="word: whitespace words; char: Unicode characters; "
                                             "bpe / unigram: sentencepiece subwords.")] = "word",
    vocab_size: Annotated[int | None, typer.Option(min=3, help="Vocabulary size, special tokens included "
                          "[default: all words/chars for word and char, 8000 for bpe/unigram].",
                          show_default=False)] = None,
    min_freq: Annotated[int, typer.Option(min=1, help="word/char: units seen fewer times become `<unk>`.")] = 1,
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Lowercase all text first.")] = False,
    character_coverage: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="bpe/unigram: the share of the text's characters kept as pieces of their own; "
                               "the rarest are spelled in UTF-8 bytes. Suits Japanese and Chinese; use 1.0 for "
                               "small alphabets. When --vocab-size cannot hold the characters it asks for, the most "
                               "frequent that fit are kept, with a note on stderr.")
    ] = DEFAULT_CHARACTER_COVERAGE,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a dataset already in --out (the old one stays until the new one is complete).")
    ] = False,
    encoding_errors: EncodingErrorsOpt = "strict",
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, show_default=False,
        help="Processes that encode the text (only text longer than 10,000 lines is split among them). "
             "[default: one per CPU core, at most 8]")] = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build a vocabulary and encode text into a dataset directory.

    The vocabulary comes from TRAIN alone; --valid and --test are encoded with it.
    The directory holds the tokenizer, each split as a compact id array (read by memory map when
    training) and meta.json (sources with sha256, lines, tokens and OOV rate per split).

    Examples:

    \b
      rnnlm tokenize ptb/train.txt --valid ptb/valid.txt --test ptb/test.txt \\
          --out data/ptb
      rnnlm tokenize ja.txt --kind unigram --vocab-size 8000 --out data/ja
    """
    from rnnlm_cli.config import TokenizeConfig
    from rnnlm_cli.jobs.tokenize import tokenize_corpus

    output.setup_logging(quiet)
    config = TokenizeConfig(train=train, out=out, valid=valid, test=test, kind=kind,
                            vocab_size=vocab_size, min_freq=min_freq, lowercase=lowercase,
                            character_coverage=character_coverage, force=force,
                            encoding_errors=encoding_errors, jobs=jobs)
    summary = tokenize_corpus(config)
    if json_output:
        output.print_json(summary.to_dict())
    elif not quiet:
        output.stderr().print(_table(summary))


def _table(summary):
    from rich.table import Table

    table = Table(title=f"{summary.directory}: {summary.kind} tokenizer, {summary.vocab_size:,} tokens "
                        f"({summary.dtype} ids)", title_justify="left")
    for column in ("split", "source", "lines", "tokens", "OOV", "OOV %"):
        table.add_column(column, justify="left" if column in ("split", "source") else "right")
    for split in summary.splits:
        table.add_row(split.split, split.source, f"{split.lines:,}", f"{split.tokens:,}", f"{split.oov:,}",
                      f"{100 * split.oov_rate:.2f}")
    return table
