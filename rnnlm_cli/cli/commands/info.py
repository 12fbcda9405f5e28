from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import CheckpointArg, JsonOpt

NAME = "info"
BAR_WIDTH = 30


def command(
    checkpoint: CheckpointArg,
    plot: Annotated[Optional[str], typer.Option(
        metavar="FILE", show_default=False,
        help="Also draw the training curve into FILE (.png, .svg or .pdf; needs the `plot` extra, matplotlib).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Describe a checkpoint: model, parameters, tokenizer, training data, settings and training curve.

    Example:

        rnnlm info ptb.pt

        rnnlm info ptb.pt --plot curve.svg

        rnnlm info ptb.pt --json | jq .best_valid_ppl
    """
    from rnnlm_cli.checkpoint import checkpoint_info

    info = checkpoint_info(checkpoint)
    if plot is not None:
        from rnnlm_cli.plot import plot_history

        plot_history(info.history, plot, title=str(checkpoint))
    if json_output:
        output.print_json(info.to_dict())
        return
    console = output.stdout()
    for table in _tables(info):
        console.print(table)
    if plot is not None:
        output.stderr().print(f"training curve -> {plot}")


def _tables(info):
    from rich.table import Table

    def key_values(title, rows):
        table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(key, str(value))
        return table

    model = info.model_config
    yield key_values(f"{info.path} (format version {info.format_version})", [
        ("model", f"{model['layers']} x {model['hidden_size']} {model['cell']}, embedding {model['emb_size']}"
                  f"{', tied' if model['tie_weights'] else ''}, dropout {model['dropout']}"
                  + (f", adaptive softmax (cutoffs {', '.join(map(str, model['cutoffs']))})"
                     if model.get("softmax") == "adaptive" else "")),
        ("parameters", f"{info.parameters:,}"),
        ("tokenizer", f"{info.tokenizer_kind}, {info.vocab_size:,} tokens{', lowercased' if info.lowercase else ''}"),
        ("epochs trained", info.epochs_trained),
        ("steps", f"{info.steps:,}" + (f" (on {info.processes} processes)" if info.processes > 1 else "")),
        ("best valid ppl", f"{output.number(info.best_valid_ppl)} (epoch {info.best_epoch})"
                           if info.best_valid_ppl else "n/a"),
        ("resumable", "yes" if info.resumable else "no (best-model checkpoint; its .last companion resumes)"),
        ("versions", ", ".join(f"{k} {v}" for k, v in info.versions.items())),
    ])
    if info.train_config:
        settings = {k: v for k, v in info.train_config.items() if k not in ("dataset", "out")}
        yield key_values("training settings", [(k, v) for k, v in settings.items()])
    splits = info.data.get("splits", {})
    if splits:
        table = Table(title=f"trained on {info.data.get('dataset', '?')} "
                            f"(validation: {info.data.get('validation', '?')})", title_justify="left")
        for column in ("split", "source", "lines", "tokens", "sha256"):
            table.add_column(column, justify="right" if column in ("lines", "tokens") else "left")
        for split, fingerprint in splits.items():
            table.add_row(split, fingerprint["source"], f"{fingerprint['lines']:,}", f"{fingerprint['tokens']:,}",
                          fingerprint["sha256"])
        yield table
    if info.history:
        yield _curve(info.history)


def _curve(history):
    """The training curve as a table: one row per validation, with bars on a log scale."""
    from rich.table import Table

    values = [record[key] for record in history for key in ("train_ppl", "valid_ppl")]
    low, high = math.log(min(values)), math.log(max(values))

    def bar(ppl: float, style: str) -> str:
        filled = 1 + round((BAR_WIDTH - 1) * (math.log(ppl) - low) / (high - low)) if high > low else BAR_WIDTH
        return f"[{style}]{'━' * filled}[/]"

    table = Table(title="training curve (bars: perplexity, log scale; blue train, green validation)",
                  title_justify="left")
    for column in ("epoch", "train ppl", "valid ppl", "", "lr", "clipped", "seconds", "tokens/s"):
        table.add_column(column, justify="left" if column == "" else "right")
    for record in history:
        epoch = f"{record['epoch']}{'' if record.get('complete', True) else ' (partial)'}"
        table.add_row(epoch, output.number(record["train_ppl"]), output.number(record["valid_ppl"]),
                      bar(record["train_ppl"], "blue") + "\n" + bar(record["valid_ppl"], "green"),
                      f"{record['lr']:.4g}", f"{100 * record.get('clipped_fraction', 0):.0f}%",
                      output.number(record["seconds"], 1), output.number(record["tokens_per_second"], 0))
    return table
