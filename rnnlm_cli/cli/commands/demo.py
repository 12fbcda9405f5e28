from __future__ import annotations

import sys
from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import DeviceOpt, JsonOpt, QuietOpt, ThreadsOpt

NAME = "demo"


def command(
    out_dir: Annotated[str, typer.Option("--out-dir", metavar="DIR", help="Where the dataset and checkpoints go.")
                       ] = "checkpoints",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Tokenize, train, evaluate and sample on the bundled demo corpus.

    The corpus is short English and Japanese sentences. The demo trains a 1 x 256 LSTM on a
    600-piece sentencepiece vocabulary for 5 epochs, 15-25 seconds on two CPU cores. It
    writes DIR/demo-data/ (the dataset), DIR/demo.pt (the model) and DIR/demo.last.pt (its
    resumable state); each step's summary goes to stderr as it finishes, the samples to
    stdout.

    Examples:

    \b
      rnnlm demo
      rnnlm eval checkpoints/demo.pt corpora/demo/test.txt --context line
      rnnlm sample checkpoints/demo.pt --prompt "日曜日に" -n 3
    """
    from rnnlm_cli.cli.commands.evaluate import _table as eval_table
    from rnnlm_cli.cli.commands.tokenize import _table as tokenize_table
    from rnnlm_cli.jobs.demo import DEMO_SAMPLING, run_demo

    output.setup_logging(quiet)
    console = output.stderr()

    def show(step: str, result) -> None:
        if json_output or quiet:
            return
        if step == "tokenize":
            console.print(tokenize_table(result))
        elif step == "eval":
            console.print(eval_table(result))
        elif step == "sample":
            console.print("samples: {num_samples} per prompt, temperature {temperature}, seed {seed}"
                          .format(**DEMO_SAMPLING))

    result = run_demo(out_dir=out_dir, device=device, progress=not quiet, threads=threads, on_step=show)
    if json_output:
        output.print_json(result.to_dict())
        return
    sys.stdout.write("\n".join(item.text for item in result.samples.samples) + "\n")
    sys.stdout.flush()
    if not quiet:
        console.print(f"model: {result.training.checkpoint}; next: `rnnlm info {result.training.checkpoint}` or "
                      f"`rnnlm sample {result.training.checkpoint} --prompt Tom`")
