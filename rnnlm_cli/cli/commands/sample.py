from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import CheckpointArg, Device, DeviceOpt, QuietOpt

NAME = "sample"


def command(
    checkpoint: CheckpointArg,
    prompt: Annotated[Optional[list[str]], typer.Option(
        "--prompt", "-p", show_default=False,
        help="Text the samples continue; repeat for several prompts. Default: start of a new line.")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", min=1, help="Samples per prompt.")] = 1,
    max_tokens: Annotated[int, typer.Option(min=1, help="Generated tokens per sample, at most.")] = 50,
    temperature: Annotated[float, typer.Option(min=0.0, help="Below 1 sharper, above 1 flatter; 0 is greedy.")] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, help="Sample among the K most likely tokens; 0 keeps all.")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed and options give the same text.")] = 0,
    stop_at_eos: Annotated[Optional[bool], typer.Option(
        "--stop-at-eos/--no-stop-at-eos", show_default="stop, except for char models",
        help="End each sample at the end-of-line token.")] = None,
    device: DeviceOpt = Device("auto"),
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON Lines: one object per sample.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate text from a checkpoint, optionally continuing a prompt.

    stdout carries the samples and nothing else: one per line (the prompt, then its
    continuation); samples from character models, which may hold line breaks, are separated by a
    blank line.

    Example:

        rnnlm sample ptb.pt --prompt "the company said" -n 3 --temperature 0.8 --top-k 40
    """
    from rnnlm_cli.config import SampleConfig
    from rnnlm_cli.generate import sample

    output.setup_logging(quiet)
    config = SampleConfig(checkpoint=checkpoint, prompts=list(prompt) if prompt else [""],
                          num_samples=num_samples, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                          seed=seed, device=device.value, stop_at_eos=stop_at_eos)
    result = sample(config)
    if json_output:
        for item in result.samples:
            output.print_json_line(item.to_dict())
        return
    separator = "\n\n" if result.multiline else "\n"
    sys.stdout.write(separator.join(item.text for item in result.samples) + "\n")
