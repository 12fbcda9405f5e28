from __future__ import annotations

import sys
from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import (
    CheckpointArg,
    DeviceOpt,
    Format,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
)

NAME = "fill"
TSV_COLUMNS = ("sentence", "rank", "filler", "logprob", "probability")


def command(
    checkpoint: CheckpointArg,
    sentences: Annotated[list[str] | None, typer.Argument(
        metavar="SENTENCE", show_default=False,
        help="Sentences with one blank (___) each, tokenized the way the model's training text was.")] = None,
    sentences_from: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False, help="Read sentences one per line from FILE (- reads stdin).")] = None,
    candidates: Annotated[str | None, typer.Option(
        metavar="A,B,C", show_default=False,
        help="Rank only these fillers (comma-separated; each may be several words). Needed for subword "
             "and character models; word models rank their whole vocabulary without it.")] = None,
    top: Annotated[int, typer.Option(min=1, help="Fillers listed per sentence, best first.")] = 10,
    blank: Annotated[str, typer.Option(help="The marker of the blank in each sentence.")] = "___",
    output_format: Annotated[Format, typer.Option(
        "--format", help="table, tsv (with a header; one row per filler) or json (JSON Lines: one object per "
                         "sentence).")] = "table",
    json_output: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Fillers scored together.")] = 1024,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rank fillers of a blank by the whole sentence's probability.

    Each filler's score (logprob, natural log) is the log-probability of the complete line with
    the filler in the blank, the end of line included, so the words on both sides of the blank
    count; probability is its share among all the fillers scored for that sentence. Word models
    rank their whole vocabulary (`<unk>` and `<eos>` aside); --candidates ranks given strings
    with any model. stdout carries only results.

    Examples:

    \b
      rnnlm fill ptb.pt "the company said it expects ___ to rise ."
      rnnlm fill ptb.pt "mary came in . mary said hi to ___ ." \\
          --candidates tom,mary,john --json
      rnnlm fill ptb.pt --sentences-from cloze.txt --format tsv --top 3
    """
    from rnnlm_cli.config import FillConfig
    from rnnlm_cli.errors import ConfigError, InputError
    from rnnlm_cli.jobs.fill import BlankFiller, split_at_blank
    from rnnlm_cli.textio import iter_lines

    output.setup_logging(quiet)
    if bool(sentences) == bool(sentences_from):
        raise ConfigError("give the sentences as arguments or with --sentences-from FILE, one of the two")
    config = FillConfig(checkpoint=checkpoint, sentences=list(sentences or []), top=top, blank=blank,
                        candidates=candidates.split(",") if candidates is not None else None,
                        batch_size=batch_size, precision=precision, device=device, threads=threads)
    for sentence in config.sentences:  # arguments are checked before the model loads
        try:
            split_at_blank(sentence, blank)
        except InputError as error:
            raise ConfigError(str(error)) from None
    chosen = "json" if json_output else output_format
    results = BlankFiller(config).fill(iter_lines(sentences_from) if sentences_from else config.sentences)
    if chosen == "tsv":
        sys.stdout.write("\t".join(TSV_COLUMNS) + "\n")
    for result in results:
        if chosen == "json":
            output.print_json_line(result.to_dict())
        elif chosen == "tsv":
            for rank, filler in enumerate(result.fillers, start=1):
                output.write_tsv_row([result.sentence, rank, filler.text, filler.logprob, filler.probability])
        else:
            output.stdout().print(_table(result))
        sys.stdout.flush()


def _table(result):
    from rich.table import Table

    caption = (f"{result.scored:,} fillers scored; logprob: natural log of the whole sentence; "
               "probability: share among the fillers scored")
    table = Table(title=result.sentence, caption=caption, caption_justify="left", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("filler", overflow="fold")
    table.add_column("logprob", justify="right", no_wrap=True)
    table.add_column("probability", justify="right", no_wrap=True)
    for rank, filler in enumerate(result.fillers, start=1):
        table.add_row(str(rank), filler.text, f"{filler.logprob:.3f}", f"{filler.probability:.4f}")
    return table
