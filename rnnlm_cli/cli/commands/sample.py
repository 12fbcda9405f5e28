from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import CheckpointArg, DeviceOpt, QuietOpt, ThreadsOpt

NAME = "sample"


def command(
    checkpoint: CheckpointArg,
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", "-p", show_default=False,
        help="Text the samples continue; repeat for several prompts. Default: start of a new line.")] = None,
    prompts_from: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False,
        help="Read prompts one per line from FILE (- reads stdin); an empty line samples from scratch.")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", min=1, help="Samples per prompt.")] = 1,
    max_tokens: Annotated[int, typer.Option(min=1, help="Generated tokens per sample, at most.")] = 50,
    temperature: Annotated[float, typer.Option(help="Below 1 sharper, above 1 flatter; 0 is greedy.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the K most likely tokens; 0 keeps all.")] = 0,
    top_p: Annotated[float, typer.Option(
        help="Nucleus sampling: sample among the fewest most likely tokens whose probabilities add up to P; "
             "1 keeps all.")] = 1.0,
    greedy: Annotated[bool, typer.Option(
        "--greedy", help="Always the most likely token (the same as --temperature 0 or --top-k 1).")] = False,
    beam_size: Annotated[int, typer.Option(
        metavar="N", show_default=False,
        help="Beam search: print the N most probable continuations of each prompt, best first, instead of "
             "sampling.")] = 0,
    stop_at_eos: Annotated[bool | None, typer.Option(
        "--stop-at-eos/--no-stop-at-eos", show_default="stop, except for char models",
        help="End each sample at the end-of-line token.")] = None,
    seed: Annotated[int | None, typer.Option(
        metavar="N", show_default=False,
        help="Random seed: the same seed and options give the same text. [default: a new one for each call, "
             "shown on stderr (and in --json) so that the call can be repeated]")] = None,
    stream: Annotated[bool | None, typer.Option(
        "--stream/--no-stream", show_default="when stdout is a terminal",
        help="Print tokens as they are generated.")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Samples generated together (prompts are never split across batches).")] = 256,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="JSON Lines: one object per sample with prompt, text, tokens and logprob (natural log).")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate text from a checkpoint, optionally continuing prompts.

    stdout carries the samples and nothing else: one per line (the prompt, then its
    continuation), in prompt order; samples from character models, which may hold line breaks,
    are separated by a blank line. All samples of a call run as one batch.

    Examples:

    \b
      rnnlm sample ptb.pt --prompt "the company said" -n 3 --top-p 0.9
      rnnlm sample ptb.pt --prompt "the company said" --beam-size 5 --json
      cut -d' ' -f1-3 news.txt | rnnlm sample ptb.pt --prompts-from - --greedy
    """
    from rnnlm_cli.config import SampleConfig
    from rnnlm_cli.errors import ConfigError
    from rnnlm_cli.jobs.sample import Generator, multiline
    from rnnlm_cli.textio import iter_lines

    output.setup_logging(quiet)
    if prompt and prompts_from:
        raise ConfigError("give prompts with --prompt or with --prompts-from, not both")
    config = SampleConfig(checkpoint=checkpoint, prompts=list(prompt) if prompt else [""], num_samples=num_samples,
                          max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                          beam_size=beam_size, seed=seed, device=device, stop_at_eos=stop_at_eos,
                          batch_size=batch_size, threads=threads)
    if stream and json_output:
        raise ConfigError("--stream shows text as it grows; --json writes each sample once it is complete")
    if stream and beam_size:
        raise ConfigError("--stream cannot show beam search, whose best continuations change until the end")
    generator = Generator(config)
    if seed is None and not (config.is_greedy or beam_size):
        logging.getLogger(__name__).info("seed %d (--seed %d repeats these samples)", generator.seed, generator.seed)
    prompts = iter_lines(prompts_from) if prompts_from else config.prompts
    if json_output:
        for item in generator.samples(prompts):
            output.print_json_line({**item.to_dict(), "seed": generator.seed})
            sys.stdout.flush()
        return
    writer = output.OrderedText(separator="\n" if multiline(generator.tokenizer.kind) else "")
    live = stream if stream is not None else sys.stdout.isatty() and not beam_size
    for index, item in enumerate(generator.samples(prompts, on_text=writer.update if live else None)):
        if not live:
            writer.update(index, item.text, True)
