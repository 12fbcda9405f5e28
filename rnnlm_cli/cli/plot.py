"""A picture of a training run: train and validation perplexity per epoch, and with --log-gradients the
gradient norm per step and the hidden-state gradient probe (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlm_cli.errors import ConfigError, RnnlmError


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "",
                 gradients: dict[str, list] | None = None, clip: float = 0.0) -> Path:
    """Write the curve to ``path``; the format follows its suffix (.png, .svg, .pdf). ``gradients`` (the
    "step" and "norm" lists of --log-gradients) and the history's probes add two panels below it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise RnnlmError("--plot needs matplotlib: pip install 'rnnlm-cli[plot]'") from None
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError(f"--plot writes .png, .svg or .pdf files, not {path.suffix or 'a file without suffix'}")
    if not history:
        raise RnnlmError("the checkpoint holds no training history to plot")
    from rnnlm_cli.checkpoint import epoch_position

    epochs = [epoch_position(record) for record in history]  # 6.45: a validation 45% into epoch 7
    probes = [record for record in history if record.get("hidden_gradient_norms")]
    panels = 1 + bool(gradients) + bool(probes)
    figure, all_axes = plt.subplots(panels, 1, figsize=(7, 4.2 * panels), squeeze=False)
    axes = all_axes[0][0]
    axes.plot(epochs, [r["train_ppl"] for r in history], marker="o", label="train")
    axes.plot(epochs, [r["valid_ppl"] for r in history], marker="o", label="validation")
    _log_axes(axes, "epoch", "perplexity")
    if title:
        axes.set_title(title)
    row = 1
    if gradients:
        axes = all_axes[row][0]
        row += 1
        axes.plot(gradients["step"], gradients["norm"], linewidth=0.6, label="global gradient norm")
        if clip > 0:
            axes.axhline(clip, color="red", linestyle="--", linewidth=1, label=f"clip {clip:g}")
        _log_axes(axes, "step", "gradient norm")
    if probes:
        axes = all_axes[row][0]
        for record in probes:
            norms = record["hidden_gradient_norms"]
            axes.plot(range(1, len(norms) + 1), norms, label=f"epoch {record['epoch']}")
        _log_axes(axes, "steps back from the loss", "|d loss / d hidden state|", ncol=2)
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as error:
        raise RnnlmError(f"{path}: cannot write the plot ({error.strerror})") from None
    finally:
        plt.close(figure)
    return path


def _log_axes(axes: Any, x_label: str, y_label: str, ncol: int = 1) -> None:
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small" if ncol > 1 else None, ncol=ncol)
