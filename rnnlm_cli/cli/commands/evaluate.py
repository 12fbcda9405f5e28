from __future__ import annotations

from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import CheckpointArg, Context, Device, DeviceOpt, JsonOpt, QuietOpt

NAME = "eval"


def command(
    checkpoint: CheckpointArg,
    files: Annotated[list[str], typer.Argument(metavar="FILE...", show_default=False,
                                               help="Text files to score, one sentence per line; - reads stdin.")],
    context: Annotated[Context, typer.Option(
        help="stream: carry the hidden state across lines (how the model was trained, and how published "
             "PTB / WikiText numbers are measured); line: start each line afresh, like SRILM and KenLM.")
    ] = Context("stream"),
    batch_size: Annotated[int, typer.Option(min=1, help="Lines per forward pass with --context line; "
                                                        "the result does not depend on it.")] = 64,
    device: DeviceOpt = Device("auto"),
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Perplexity of a checkpoint on one or more text files, per file and in total.

    Every token is scored, the end-of-sentence token at each line end included (ppl); ppl1
    leaves it out. Words outside the vocabulary are scored as `<unk>` and counted (OOV).
    word ppl and bits/byte compare models with different tokenizers on the same text.

    Example:

        rnnlm eval ptb.pt ptb/valid.txt ptb/test.txt

        cat notes.txt | rnnlm eval ptb.pt - --json
    """
    from rnnlm_cli.config import EvalConfig
    from rnnlm_cli.evaluate import evaluate

    output.setup_logging(quiet)
    config = EvalConfig(checkpoint=checkpoint, inputs=list(files), context=context.value,
                        batch_size=batch_size, device=device.value)
    result = evaluate(config, progress=not quiet)
    if json_output:
        output.print_json(result.to_dict())
    else:
        output.stdout().print(_table(result))


def _table(result):
    from rich.table import Table

    table = Table(caption=f"context: {result.context}; ppl counts the end-of-sentence token, ppl1 leaves it out; "
                          "OOV words are scored as <unk>", caption_justify="left")
    columns = ("file", "lines", "tokens", "OOV", "nll", "ppl", "ppl1", "word ppl", "bits/byte")
    for column in columns:
        if column == "file":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    rows = result.files + ([result.total] if len(result.files) > 1 else [])
    for score in rows:
        table.add_row(score.name, f"{score.lines:,}", f"{score.tokens:,}", f"{score.oov:,}",
                      output.number(score.nll, 1), output.number(score.ppl), output.number(score.ppl1),
                      output.number(score.word_ppl), output.number(score.bits_per_byte, 3),
                      end_section=score is result.files[-1])
    return table
