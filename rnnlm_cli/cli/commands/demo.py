from __future__ import annotations

import sys
from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import Device, DeviceOpt, JsonOpt, QuietOpt

NAME = "demo"


def command(
    out_dir: Annotated[str, typer.Option("--out-dir", help="Where the dataset and checkpoints go.")] = "checkpoints",
    device: DeviceOpt = Device("auto"),
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run tokenize -> train -> eval -> sample on the bundled English + Japanese demo corpus.

    Takes about a minute on two CPU cores. Writes checkpoints/demo-data/ (the dataset),
    checkpoints/demo.pt (the model) and checkpoints/demo.last.pt (its resumable state); the
    samples go to stdout.

    Example:

        rnnlm demo

        rnnlm eval checkpoints/demo.pt corpora/demo/test.txt --context line
    """
    from rnnlm_cli.cli.commands.evaluate import _table as eval_table
    from rnnlm_cli.cli.commands.tokenize import _table as tokenize_table
    from rnnlm_cli.demo import run_demo

    output.setup_logging(quiet)
    result = run_demo(out_dir=out_dir, device=device.value, progress=not quiet)
    if json_output:
        output.print_json(result.to_dict())
        return
    if not quiet:
        console = output.stderr()
        console.print(tokenize_table(result.dataset))
        console.print(eval_table(result.evaluation))
        console.print(f"model: {result.training.checkpoint}; try `rnnlm info {result.training.checkpoint}`")
    sys.stdout.write("\n".join(item.text for item in result.samples.samples) + "\n")
