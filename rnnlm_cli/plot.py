"""A picture of a training run: train and validation perplexity per epoch (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlm_cli.errors import ConfigError, RnnlmError


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write the curve to ``path``; the format follows its suffix (.png, .svg, .pdf)."""
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
    epochs = [record["epoch"] for record in history]  # an epoch cut short by --max-time shares its number
    figure, axes = plt.subplots(figsize=(7, 4.2))
    axes.plot(epochs, [r["train_ppl"] for r in history], marker="o", label="train")
    axes.plot(epochs, [r["valid_ppl"] for r in history], marker="o", label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("perplexity")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as error:
        raise RnnlmError(f"{path}: cannot write the plot ({error.strerror})") from None
    finally:
        plt.close(figure)
    return path
