"""What a run shows and records: the progress bar, one line and one metrics record per validation, its end."""

from __future__ import annotations

import logging
import math
import signal
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rnnlm_cli.checkpoint import epoch_label
from rnnlm_cli.config import TrainConfig
from rnnlm_cli.jobs.train.budget import Budget
from rnnlm_cli.jobs.train.run import Progress
from rnnlm_cli.model import RNNLanguageModel

log = logging.getLogger(__name__)

# one line per validation under this header, in columns that fit an 80-column terminal; * marks a new best
EPOCH_HEADER = f"{'epoch':<13}{'train ppl':>10}{'valid ppl':>11}   {'lr':>8}{'clipped':>8}{'tok/s':>9}{'elapsed':>9}"


def describe(model: RNNLanguageModel) -> str:
    config = model.config
    softmax = f", adaptive softmax (cutoffs {', '.join(map(str, config.cutoffs or []))})" \
        if config.softmax == "adaptive" else ""
    return (f"a {config.layers} x {config.hidden_size} {config.cell}{' (tied)' if config.tie_weights else ''} "
            f"with {model.parameter_count():,} parameters{softmax}")


def epoch_bar(batches: int, start: int, epoch: int, epochs: int, show: bool) -> tqdm:
    # compact, so that loss, ppl and tok/s stay in view at 80 columns (the rate and lr are in the epoch lines)
    return tqdm(total=batches, initial=start, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stderr,
                leave=False, dynamic_ncols=True,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {elapsed}<{remaining}{postfix}",
                disable=None if show else True)


def bar_postfix(bar: tqdm, mean_loss: float, tokens_per_second: float) -> None:
    bar.set_postfix_str(f"loss {mean_loss:.3f} ppl {ppl(math.exp(min(mean_loss, 700)))} "
                        f"{tokens_per_second:,.0f} tok/s", refresh=False)


def validation_record(state: Progress, valid_loss: float, finished: bool, batches: int,
                      elapsed: float) -> dict[str, Any]:
    """One validation's metrics, as the checkpoint's history and the metrics file keep them."""
    train_loss = state.epoch_loss_sum / max(state.epoch_tokens, 1)
    return {
        "epoch": state.epoch + 1,
        "complete": finished,
        "epoch_fraction": state.batch / batches,  # of the epoch trained when this validation ran
        "step": state.step,
        "train_loss": train_loss,
        "train_ppl": math.exp(min(train_loss, 700)),
        "valid_loss": valid_loss,
        "valid_ppl": math.exp(min(valid_loss, 700)),
        "lr": state.lr,
        "seconds": state.epoch_seconds,
        "elapsed_seconds": elapsed,
        "process": state.earlier_processes + 1,
        "tokens_per_second": state.epoch_tokens / max(state.epoch_seconds, 1e-9),
        "clipped_fraction": state.epoch_clipped_steps / max(state.epoch_steps, 1),
    }


def epoch_line(record: dict[str, Any], epochs: int, improved: bool, elapsed: float) -> str:
    minutes, seconds = divmod(int(elapsed), 60)
    return (f"{epoch_label(record, epochs):<13}{ppl(record['train_ppl']):>10}{ppl(record['valid_ppl']):>11}"
            f"{' * ' if improved else '   '}{record['lr']:>8.4g}{100 * record['clipped_fraction']:>7.0f}%"
            f"{record['tokens_per_second']:>9,.0f}{f'{minutes}m{seconds:02d}s':>9}")


def ppl(value: float) -> str:
    return f"{value:.2f}" if value < 1e7 else f"{value:.3g}"


def log_stop(reason: str, bad_epochs: int, budget: Budget, out: Path) -> None:
    """Why the run ended before its last epoch, if it did."""
    if reason == "early_stop":
        log.info("early stop: no improvement in validation for %d epochs", bad_epochs)
    elif reason == "max_time" and budget.overrun_noticeably():  # a budget shorter than a step, validation, saves
        log.warning("stopped %.1f s past the --max-time budget of %g s (validating and saving took %.1f s); "
                    "continue with --resume %s", budget.overrun(), budget.max_time, budget.finish_seconds, out)
    elif reason == "max_time":
        log.info("stopped at the --max-time budget (allowing %.1f s of it for validating and saving); "
                 "continue with --resume %s", budget.kept_for_finish, out)


def interrupted(signum: int, state: Progress, last: Path, config: TrainConfig) -> str:
    return (f"{signal.Signals(signum).name}: stopped after step {state.step} (epoch {state.epoch + 1}) and saved "
            f"the state to {last}; continue with: rnnlm train {config.dataset} --resume {config.out}")
