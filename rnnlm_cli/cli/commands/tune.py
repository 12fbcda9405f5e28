from __future__ import annotations

from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import (
    CheckpointArg,
    Context,
    DeviceOpt,
    EncodingErrorsOpt,
    JsonOpt,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
)
from rnnlm_cli.config import (
    TUNE_CACHE_LAMBDAS,
    TUNE_CACHE_THETAS,
    TUNE_CACHE_WINDOWS,
    TUNE_DYNAMIC_DECAYS,
    TUNE_DYNAMIC_LRS,
    DynamicRule,
    DynamicSettings,
)

NAME = "tune"



def _grid(values) -> str:
    return ", ".join(f"{value:g}" for value in values)


def command(
    checkpoint: CheckpointArg,
    text: Annotated[str, typer.Argument(
        metavar="VALID", show_default=False,
        help="Validation text, one sentence per line (- reads stdin): never the text you will report.")],
    cache: Annotated[bool, typer.Option("--cache", help="Tune the cache's window, theta and lambda.")] = False,
    dynamic: Annotated[bool, typer.Option(
        "--dynamic", help="Tune dynamic evaluation's learning rate and decay (one pass over the text each).")
    ] = False,
    ngram: Annotated[str | None, typer.Option(
        metavar="MODEL", show_default=False, help="Tune the weight of this n-gram model (ARPA or KenLM binary).")
    ] = None,
    cache_window: Annotated[list[int] | None, typer.Option(
        min=1, show_default=False, help=f"A window to try; repeat for more. [default: {_grid(TUNE_CACHE_WINDOWS)}]")
    ] = None,
    cache_theta: Annotated[list[float] | None, typer.Option(
        min=0, show_default=False, help=f"A theta to try; repeat for more. [default: {_grid(TUNE_CACHE_THETAS)}]")
    ] = None,
    cache_lambda: Annotated[list[float] | None, typer.Option(
        min=0, max=1, show_default=False,
        help=f"A lambda to try; repeat for more. [default: {_grid(TUNE_CACHE_LAMBDAS)}]")] = None,
    dynamic_rule: Annotated[DynamicRule, typer.Option(help="The update rule (see rnnlm eval --help).")
                            ] = "rms",
    dynamic_lr: Annotated[list[float] | None, typer.Option(
        min=0, show_default=False,
        help=f"A learning rate to try; repeat for more. [default: {_grid(TUNE_DYNAMIC_LRS['rms'])} for rms, "
             f"{_grid(TUNE_DYNAMIC_LRS['sgd'])} for sgd]")] = None,
    dynamic_decay: Annotated[list[float] | None, typer.Option(
        min=0, max=1, show_default=False,
        help=f"A decay to try; repeat for more. [default: {_grid(TUNE_DYNAMIC_DECAYS)}]")] = None,
    dynamic_segment: Annotated[int, typer.Option(min=1, help="Tokens scored before each update.")
                               ] = DynamicSettings().segment,
    dynamic_data: Annotated[str | None, typer.Option(
        metavar="DIR", show_default=False,
        help="The dataset directory the model was trained on, for the rms rule. [default: the checkpoint's]")
    ] = None,
    ngram_weight: Annotated[list[float] | None, typer.Option(
        min=0, max=1, show_default=False, help="An n-gram weight to try; repeat for more. [default: 0.05, 0.1, "
                                               "... 0.95]")] = None,
    context: Annotated[Context, typer.Option(help="As in rnnlm eval: tune for the context you will evaluate in.")
                       ] = "stream",
    batch_size: Annotated[int, typer.Option(min=1, help="Lines per forward pass with --context line.")] = 64,
    precision: PrecisionOpt = "fp32",
    encoding_errors: EncodingErrorsOpt = "strict",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Pick --cache, --dynamic and --ngram settings on validation text.

    Tries a small grid of each adaptation's settings and prints the ppl of each,
    the best ones, and the `rnnlm eval` options that give them. The adaptations
    are tuned in the order they act, each on top of the best before it: dynamic
    evaluation (one pass over the text per setting), then the cache (from one
    recorded pass: the whole grid costs seconds), then the n-gram's weight. An
    adaptation that lowers ppl with none of its settings is left out.

    Examples:

    \b
      rnnlm tune ptb.pt ptb/valid.txt --cache
      rnnlm tune ptb.pt ptb/valid.txt --cache --dynamic --ngram kn5.arpa
      rnnlm tune ptb.pt valid.txt --cache --cache-window 200 --cache-window 1000
    """
    from rnnlm_cli.config import TUNE_NGRAM_WEIGHTS, TuneConfig
    from rnnlm_cli.jobs.tune import tune

    output.setup_logging(quiet)
    config = TuneConfig(
        checkpoint=checkpoint, text=text, context=context, cache=cache, dynamic=dynamic, ngram=ngram,
        cache_windows=tuple(cache_window or TUNE_CACHE_WINDOWS), cache_thetas=tuple(cache_theta or TUNE_CACHE_THETAS),
        cache_lambdas=tuple(cache_lambda or TUNE_CACHE_LAMBDAS), dynamic_rule=dynamic_rule,
        dynamic_lrs=tuple(dynamic_lr) if dynamic_lr else None,
        dynamic_decays=tuple(dynamic_decay or TUNE_DYNAMIC_DECAYS), dynamic_segment=dynamic_segment,
        dynamic_data=dynamic_data, ngram_weights=tuple(ngram_weight or TUNE_NGRAM_WEIGHTS), batch_size=batch_size,
        precision=precision, device=device, encoding_errors=encoding_errors, threads=threads)
    result = tune(config, progress=not quiet)
    if json_output:
        output.print_json(result.to_dict())
    else:
        output.stdout().print(_table(result))


SHOWN = ("window", "theta", "lambda", "lr", "decay", "weight")  # the settings a row shows (not the rule or model)


def _settings(trial) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in trial.settings.items() if key in SHOWN)


def _table(result):
    from rich import box
    from rich.table import Table

    chosen = result.best
    options = result.options() or "(none lowered ppl: evaluate without adaptations)"
    caption = (f"{result.text}: {result.lines:,} lines, {result.tokens:,} tokens; context {result.context}; "
               f"each adaptation on top of the best above it; * chosen. Best ppl {output.number(result.ppl)} "
               f"(static {output.number(result.static_ppl)}) with: {options}")
    table = Table(caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("adaptation")
    table.add_column("settings")
    table.add_column("ppl", justify="right")
    table.add_column("", width=1)
    for trial in result.trials:
        mark = "*" if trial.adaptation in chosen and all(
            chosen[trial.adaptation].get(key) == value for key, value in trial.settings.items()) else ""
        table.add_row(trial.adaptation, _settings(trial), output.number(trial.ppl), mark)
    return table
