from __future__ import annotations

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import CheckpointArg, JsonOpt

NAME = "info"


def command(checkpoint: CheckpointArg, json_output: JsonOpt = False) -> None:
    """Describe a checkpoint: model, parameters, tokenizer, training data and progress.

    Example:

        rnnlm info ptb.pt

        rnnlm info ptb.pt --json | jq .best_valid_ppl
    """
    from rnnlm_cli.checkpoint import checkpoint_info

    info = checkpoint_info(checkpoint)
    if json_output:
        output.print_json(info.to_dict())
        return
    console = output.stdout()
    for table in _tables(info):
        console.print(table)


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
                  f"{', tied' if model['tie_weights'] else ''}, dropout {model['dropout']}"),
        ("parameters", f"{info.parameters:,}"),
        ("tokenizer", f"{info.tokenizer_kind}, {info.vocab_size:,} tokens{', lowercased' if info.lowercase else ''}"),
        ("epochs trained", info.epochs_trained),
        ("steps", f"{info.steps:,}"),
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
        table = Table(title="history", title_justify="left")
        for column in ("epoch", "train ppl", "valid ppl", "lr", "seconds", "tokens/s"):
            table.add_column(column, justify="right")
        for record in info.history:
            epoch = f"{record['epoch']}{'' if record.get('complete', True) else ' (partial)'}"
            table.add_row(epoch, output.number(record["train_ppl"]), output.number(record["valid_ppl"]),
                          f"{record['lr']:g}", output.number(record["seconds"], 1),
                          output.number(record["tokens_per_second"], 0))
        yield table
