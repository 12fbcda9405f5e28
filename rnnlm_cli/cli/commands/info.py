from __future__ import annotations

import math
from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import CheckpointArg, JsonOpt

NAME = "info"
BAR_WIDTH = 16
# the training curve's bars differ in shape as well as colour, so that they read without colour too (NO_COLOR,
# a pipe, a printout)
TRAIN_BAR, VALID_BAR = "━", "╍"
# what an unset training setting means
UNSET = {"dropout_input": "= dropout", "dropout_hidden": "= dropout", "dropout_output": "= dropout",
         "cutoffs": "automatic", "max_time": "no limit", "save_every": "every epoch", "threads": "automatic"}
HIDDEN_SETTINGS = ("dataset", "out", "force", "preset")  # shown elsewhere, or of no interest later


def command(
    checkpoint: CheckpointArg,
    plot: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False,
        help="Also draw the training curve into FILE (.png, .svg or .pdf; needs the `plot` extra, matplotlib); "
             "runs trained with --log-gradients add the gradient charts.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Describe a checkpoint: model, data, settings, training curve.

    Shows the model and its parameters, the tokenizer, the data it was trained on (with sha256), the
    effective training settings (the preset's and the options given), and the training curve.

    Examples:

    \b
      rnnlm info ptb.pt
      rnnlm info ptb.pt --plot curve.svg
      rnnlm info ptb.pt --json | jq .best_valid_ppl
    """
    from rnnlm_cli.jobs.info import checkpoint_info

    info = checkpoint_info(checkpoint)
    if plot is not None:
        from rnnlm_cli.cli.plot import plot_history

        plot_history(info.history, plot, title=str(checkpoint), gradients=info.gradients,
                     clip=float(info.train_config.get("clip", 0)))
    if json_output:
        output.print_json(info.to_dict())
        return
    console = output.stdout()
    for table in _tables(info):
        console.print(table)
    if plot is not None:
        output.stderr().print(f"training curve -> {plot}")


def _epochs_trained(info) -> str:
    stopped = info.stopped_within_epoch
    if stopped is None:
        return str(info.epochs_trained)
    return f"{info.epochs_trained}, and {int(100 * stopped)}% of epoch {info.epochs_trained + 1}"


def _best(info) -> str:
    from rnnlm_cli.checkpoint import epoch_label

    if not info.best_valid_ppl:
        return "n/a"
    record = info.best_record
    return f"{output.number(info.best_valid_ppl)} at epoch {epoch_label(record) if record else info.best_epoch}"


def _setting(name: str, value) -> str:
    if value is None:
        return UNSET.get(name, "none")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _tables(info):
    from rich import box
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
                     if model.get("softmax") == "adaptive" else "")
                  + {"forward": "", "backward": ", backward (right to left)",
                     "both": ", bidirectional (forward and backward stacks)"}[model.get("direction", "forward")]),
        ("parameters", f"{info.parameters:,}"),
        ("tokenizer", f"{info.tokenizer_kind}, {info.vocab_size:,} tokens{', lowercased' if info.lowercase else ''}"),
        ("epochs trained", _epochs_trained(info)),
        ("steps", f"{info.steps:,}" + (f" (on {info.processes} processes)" if info.processes > 1 else "")),
        ("best valid ppl", _best(info)),
        ("resumable", "yes" if info.resumable else "no (best-model checkpoint; its .last companion resumes)"),
        ("versions", ", ".join(f"{k} {v}" for k, v in info.versions.items())),
    ])
    if info.train_config:
        preset = info.train_config.get("preset")
        title = (f"training settings (preset {preset}" if preset else "training settings (no preset") + \
            ("; * given)" if info.overrides else ")")
        yield key_values(title, [(name, _setting(name, value) + (" *" if name in info.overrides else ""))
                                 for name, value in info.train_config.items() if name not in HIDDEN_SETTINGS])
    splits = info.data.get("splits", {})
    if splits:
        table = Table(title=f"trained on {info.data.get('dataset', '?')} "
                            f"(validation: {info.data.get('validation', '?')}; sha256: the first 16 digits, --json "
                            "has them whole)", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for column in ("split", "source", "lines", "tokens", "sha256"):
            table.add_column(column, justify="right" if column in ("lines", "tokens") else "left",
                             overflow="fold" if column == "source" else "ellipsis",
                             no_wrap=column != "source")
        for split, fingerprint in splits.items():
            table.add_row(split, fingerprint["source"], f"{fingerprint['lines']:,}", f"{fingerprint['tokens']:,}",
                          fingerprint["sha256"][:16])
        yield table
    if info.history:
        yield _curve(info.history)
    if info.gradients:
        yield _step_gradients(info.gradients, float(info.train_config.get("clip", 0)))
    probes = [record for record in info.history if record.get("hidden_gradient_norms")]
    if probes:
        yield _probe_table(probes)


def _curve(history):
    """The training curve as a table: one row per validation, with bars on a log scale."""
    from rich import box
    from rich.table import Table

    from rnnlm_cli.checkpoint import epoch_label

    values = [record[key] for record in history for key in ("train_ppl", "valid_ppl")]
    low, high = min(values), max(values)

    title = f"training curve (bars: perplexity, log scale; {TRAIN_BAR} train, {VALID_BAR} validation)"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, min_width=len(title))
    for column in ("epoch", "train\nppl", "valid\nppl", "", "lr", "clip", "tokens/s"):
        table.add_column(column, justify="left" if column == "" else "right", no_wrap=True)
    for record in history:
        table.add_row(epoch_label(record), output.number(record["train_ppl"]), output.number(record["valid_ppl"]),
                      _log_bar(record["train_ppl"], low, high, "blue") + "\n"
                      + _log_bar(record["valid_ppl"], low, high, "green", VALID_BAR),
                      f"{record['lr']:.4g}", f"{100 * record.get('clipped_fraction', 0):.0f}%",
                      output.number(record["tokens_per_second"], 0))
    return table


def _log_bar(value: float, low: float, high: float, style: str, glyph: str = TRAIN_BAR) -> str:
    """A bar whose length is ``value`` on a log scale from ``low`` to ``high``."""
    if value <= 0 or not math.isfinite(value):
        return ""
    span = math.log(high) - math.log(low) if high > low > 0 else 0.0
    filled = 1 + round((BAR_WIDTH - 1) * (math.log(value) - math.log(low)) / span) if span else BAR_WIDTH
    return f"[{style}]{glyph * max(1, min(BAR_WIDTH, filled))}[/]"


def _step_gradients(gradients: dict, clip: float, bins: int = 20):
    """Global gradient norm over the run (--log-gradients), in up to ``bins`` ranges of steps."""
    from rich.table import Table

    steps, norms = gradients["step"], gradients["norm"]
    size = max(1, math.ceil(len(steps) / bins))
    groups = [(steps[i : i + size], norms[i : i + size]) for i in range(0, len(steps), size)]
    positive = [n for n in norms if n > 0 and math.isfinite(n)] or [1.0]
    low, high = min(positive), max(positive)
    clipping = f"; clipped above {clip:g}" if clip > 0 else ""
    table = Table(title=f"gradient norm per step (bars: mean norm, log scale{clipping})", title_justify="left")
    for column in ("steps", "mean norm", "max norm", "clipped", ""):
        table.add_column(column, justify="left" if column == "" else "right")
    for group_steps, group_norms in groups:
        mean = sum(group_norms) / len(group_norms)
        clipped = sum(norm > clip for norm in group_norms) / len(group_norms) if clip > 0 else 0.0
        table.add_row(f"{group_steps[0]:,}-{group_steps[-1]:,}", f"{mean:.3g}", f"{max(group_norms):.3g}",
                      f"{100 * clipped:.0f}%", _log_bar(mean, low, high, "magenta"))
    return table


def _probe_table(probes: list[dict]):
    """How the loss gradient reaches back through the hidden states, at the first and the last validation."""
    from rich.table import Table

    shown = [probes[0]] if len(probes) == 1 else [probes[0], probes[-1]]
    length = min(len(record["hidden_gradient_norms"]) for record in shown)
    distances = sorted({*(2**i for i in range(length.bit_length()) if 2**i <= length), length})
    values = [v for record in shown for v in record["hidden_gradient_norms"][:length] if v > 0]
    low, high = (min(values), max(values)) if values else (1.0, 1.0)
    table = Table(title="gradient of the loss reaching back to the hidden state k steps earlier "
                        "(log scale; falling: vanishing, rising: exploding)", title_justify="left")
    table.add_column("k", justify="right")
    for record in shown:
        table.add_column(f"epoch {record['epoch']}", justify="right")
        table.add_column("")
    for k in distances:
        cells = []
        for style, record in zip(("cyan", "green"), shown):
            value = record["hidden_gradient_norms"][k - 1]
            cells += [f"{value:.3g}", _log_bar(value, low, high, style)]
        table.add_row(str(k), *cells)
    return table
