"""Train a preset on PTB to the end and measure it: wall-clock time, validation curve, test perplexity.

    python bench/presets.py small                   # writes the "preset-small-auto" section of docs/benchmarks.md
    python bench/presets.py small --precision fp32  # the same recipe in fp32, for the bf16 comparison
    python bench/presets.py medium --max-hours 5    # stops cleanly at the budget and reports what it reached
    python bench/presets.py medium --max-hours 2 --resume   # continues that run where it stopped
    python bench/presets.py small --compare         # bf16 against fp32, from the two finished runs above
    python bench/presets.py medium --report         # rewrites the section from the stored run (no training)
    python bench/presets.py small --curves small-fast  # time to quality: the finished runs side by side, and a plot

Runs `rnnlm train DATA --preset NAME --out checkpoints/ptb-NAME-PRECISION.pt` as one process, then
`rnnlm eval` on the test split with the stream context (the protocol behind the published numbers).
Wall-clock time is the whole training process, validation and checkpointing included; a run continued with
--resume adds each segment's wall-clock time (resume is exact, so the result is that of one long run).
While it trains, the section is rewritten after each validation (checked every 30 s), marked as in progress,
so a run that is cut off before it ends still leaves its validation curve in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED_DATA, machine, publish, run_rnnlm, tokenized

from rnnlm_cli.checkpoint import epoch_label, load_checkpoint
from rnnlm_cli.config import PRESET_SOURCES, PRESETS
from rnnlm_cli.jobs.train import last_state_path, metrics_path
from rnnlm_cli.runtime import resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ptb")
    parser.add_argument("--max-hours", type=float, default=None, help="stop training after this long")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (a dry run)")
    parser.add_argument("--resume", action="store_true", help="continue the run in checkpoints/ where it stopped")
    parser.add_argument("--compare", action="store_true", help="compare the finished auto and fp32 runs")
    parser.add_argument("--report", action="store_true", help="rewrite the section from the stored run, no training")
    parser.add_argument("--curves", metavar="PRESET,...", default=None,
                        help="no training: validation ppl against minutes of the finished runs of this preset and "
                             "these, side by side, as a table and docs/time-to-quality-ptb.svg (needs matplotlib)")
    args = parser.parse_args()

    out_dir = ROOT / "checkpoints"
    if args.curves:
        time_to_quality([args.preset, *args.curves.split(",")], args.precision, out_dir)
        return
    if args.compare:
        compare_precisions(args.preset, out_dir, args.data)
        return
    data_dir = tokenized(args.data, "ptb-data")
    checkpoint = out_dir / f"ptb-{args.preset}-{args.precision}.pt"
    if args.report:
        train = load_checkpoint(last_state_path(checkpoint)).train
        history = train["history"]
        run = {"history": history, "precision": train["precision"], "epochs": train["epoch"],
               "stop_reason": "completed" if history[-1]["complete"] and train["epoch"] >= train["config"]["epochs"]
               else "stopped", "best_valid_ppl": math.exp(train["best_valid_loss"]), "best_epoch": train["best_epoch"]}
        report(args, checkpoint, run, cumulative_elapsed(history)[-1])
        return
    options = ["--preset", args.preset, "--precision", args.precision, "--out", checkpoint, "--force", "--json",
               "-q"]
    earlier: list[dict] = []  # validations of earlier segments of a resumed run
    if args.resume:  # a resumed run keeps its own settings
        options = ["--resume", checkpoint, "--json", "-q"]
        earlier = load_checkpoint(last_state_path(checkpoint)).train["history"]
    if args.max_hours:
        options += ["--max-time", args.max_hours * 3600]
    if args.epochs:
        options += ["--epochs", args.epochs]
    progress = None if args.epochs else Progress(args, checkpoint)
    seconds, stdout = run_rnnlm("train", data_dir, *options, while_running=progress)
    result = json.loads(stdout)
    if earlier:  # add the earlier segments' time
        seconds += cumulative_elapsed(result["history"])[len(earlier) - 1]
    report(args, checkpoint, result, seconds)


def report(args: argparse.Namespace, checkpoint: Path, run: dict, seconds: float) -> None:
    """Evaluate the best checkpoint on the test split and write the preset's section from the run's records."""
    _, stdout = run_rnnlm("eval", checkpoint, args.data / "test.txt", "--json", "-q")
    test = json.loads(stdout)["total"]
    history = run["history"]
    if not args.epochs:  # what --curves reads: the test ppl and the time of a finished run
        result_path(checkpoint).write_text(json.dumps({"test_ppl": test["ppl"], "seconds": seconds,
                                                       "machine": machine(), "finished": time.strftime(
                                                           "%Y-%m-%d %H:%M UTC", time.gmtime())}) + "\n")
    segments = max(1 + sum(after["elapsed_seconds"] < record["elapsed_seconds"]
                           for record, after in itertools.pairwise(history)),
                   max(record.get("process", 1) for record in history))
    how = ("the whole process" if segments == 1 else
           f"the run was trained in {segments} segments continued with --resume; this is their sum")
    if args.report:
        how = (f"{segments} segment(s); the sum of the training processes' own clocks at their last validation, "
               "without start-up; rebuilt with --report from the stored records")
    body = "\n\n".join([
        *heading(args, run["precision"]),
        f"**PTB test ppl {test['ppl']:.2f}** (`rnnlm eval`, stream context; {test['tokens']:,} tokens) after "
        f"{run['epochs']} epochs{'' if history[-1]['complete'] else ' and part of the next'} ({run['stop_reason']}); "
        f"best validation ppl {run['best_valid_ppl']:.2f} "
        f"at epoch {run['best_epoch']}; training took **{seconds / 60:.1f} minutes** of wall-clock time ({how}).",
        curve(history),
    ])
    publish(f"preset-{args.preset}-{args.precision}", body, dry_run=bool(args.epochs))


class Progress:
    """While the run trains: rewrite the preset's section after each new validation, marked as in progress, so
    that a run cut off before its end (a lost machine, a closed session) still leaves its curve in the docs."""

    def __init__(self, args: argparse.Namespace, checkpoint: Path) -> None:
        self.args, self.metrics, self.shown = args, metrics_path(checkpoint), 0

    def __call__(self) -> None:
        try:
            lines = self.metrics.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        history = [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is skipped
        if len(history) <= self.shown:
            return
        self.shown = len(history)
        last = history[-1]
        body = "\n\n".join([
            *heading(self.args, resolve_precision(self.args.precision, torch.device("cpu"))),
            f"**In progress**: written at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} while the run "
            f"was training, after epoch {epoch_label(last)} and "
            f"{cumulative_elapsed(history)[-1] / 60:.1f} minutes; the test ppl is measured when it ends, and this "
            "section is rewritten then. If it still reads so, the run did not finish.",
            curve(history),
        ])
        publish(f"preset-{self.args.preset}-{self.args.precision}", body, dry_run=False)


def heading(args: argparse.Namespace, precision: str) -> list[str]:
    """The section's title and its recipe, machine and command paragraph."""
    command = (f"python bench/presets.py {args.preset} --precision {args.precision}"
               f"{f' --max-hours {args.max_hours:g}' if args.max_hours else ''}"
               f"{f' --epochs {args.epochs}' if args.epochs else ''}{' --resume' if args.resume else ''}"
               f"{' --report' if args.report else ''}")
    return [f"## Preset `{args.preset}`, precision {args.precision} ({precision}) (`bench/presets.py`)",
            f"Recipe: {PRESET_SOURCES[args.preset]}. Machine: {machine()}. Command: `{command}`."]


def curve(history: list[dict]) -> str:
    """The validation records as a table: one row per validation, with the time since the run began."""
    rows = ["| epoch | lr | train ppl | valid ppl | clipped | tokens/s | elapsed (min) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for record, since_start in zip(history, cumulative_elapsed(history)):
        rows.append(f"| {epoch_label(record)} | {record['lr']:.4g} | {record['train_ppl']:.2f} | "
                    f"{record['valid_ppl']:.2f} | {100 * record['clipped_fraction']:.0f}% | "
                    f"{record['tokens_per_second']:,.0f} | {since_start / 60:.1f} |")
    return "\n".join(rows)


def cumulative_elapsed(history: list[dict]) -> list[float]:
    """Each record's wall-clock seconds since the run began. `rnnlm train` counts ``elapsed_seconds`` over the
    whole run, resumed processes included; checkpoints written before it did (format 3 files without a
    ``process`` field in their records) counted from the start of each process, so there a resumed segment shows
    up as a record whose clock went back, and the segments before it are added on."""
    since_start, base, previous = [], 0.0, 0.0
    for record in history:
        if record["elapsed_seconds"] < previous:  # a resumed segment begins
            base += previous
        previous = record["elapsed_seconds"]
        since_start.append(base + previous)
    return since_start


def result_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.result.json")


def time_to_quality(presets: list[str], precision: str, out_dir: Path) -> None:
    """The finished runs of ``presets`` side by side: each one's validation ppl against wall-clock minutes, its test
    ppl and its time as a share of the first one's; a table in docs/benchmarks.md and a plot beside it."""
    runs = {}
    for preset in presets:
        checkpoint = out_dir / f"ptb-{preset}-{precision}.pt"
        result = json.loads(result_path(checkpoint).read_text(encoding="utf-8"))
        history = load_checkpoint(last_state_path(checkpoint)).train["history"]
        runs[preset] = (result, history, [seconds / 60 for seconds in cumulative_elapsed(history)])
    first = runs[presets[0]][0]["seconds"]
    rows = ["| preset | recipe | epochs | best valid ppl | PTB test ppl | wall-clock (min) | of the first's time |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for preset, (result, history, _) in runs.items():
        rows.append(f"| `{preset}` | {PRESET_SOURCES[preset]} | {len(history)} | "
                    f"{min(r['valid_ppl'] for r in history):.2f} | {result['test_ppl']:.2f} | "
                    f"{result['seconds'] / 60:.1f} | {100 * result['seconds'] / first:.0f}% |")
    marks = range(1, math.ceil(max(elapsed[-1] for _, _, elapsed in runs.values())) + 1)  # whole minutes
    curve_rows = ["| minutes | " + " | ".join(f"`{preset}` valid ppl" for preset in presets) + " |",
                  "|---:|" + "---:|" * len(presets)]
    for minutes in marks:  # each run's best validation ppl so far, at every minute mark any run validated
        cells = []
        for _, history, elapsed in runs.values():
            seen = [r["valid_ppl"] for r, at in zip(history, elapsed) if at <= minutes]
            cells.append(f"{min(seen):.2f}" if seen else "")
        curve_rows.append(f"| {minutes} | " + " | ".join(cells) + " |")
    picture = ROOT / "docs" / f"time-to-quality-ptb-{precision}.svg"
    drawn = plot_time_to_quality(runs, picture)
    machines = sorted({result["machine"] for result, _, _ in runs.values()})
    body = "\n\n".join([
        f"## Time to quality on PTB (`bench/presets.py {presets[0]} --curves {','.join(presets[1:])}`)",
        f"Each run is `python bench/presets.py PRESET --precision {precision}`: one whole `rnnlm train` process, "
        "then `rnnlm eval` of its best checkpoint on the test split. Runs measured one after the other on "
        f"{'one machine' if len(machines) == 1 else 'these machines'}: {'; '.join(machines)}. Finished: "
        + ", ".join(f"`{preset}` {result['finished']}" for preset, (result, _, _) in runs.items()) + ".",
        "\n".join(rows),
        "The best validation ppl each run had reached after so many wall-clock minutes of its process (a run "
        "that has ended keeps its last value):"
        + (f" ![validation ppl against minutes]({picture.name})" if drawn else ""),
        "\n".join(curve_rows),
    ])
    publish(f"time-to-quality-{precision}", body, dry_run=False)


def plot_time_to_quality(runs: dict, path: Path) -> bool:
    """Validation ppl against minutes, one line per run; False (and a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install '.[plot]'): the table is written, the picture is not")
        return False
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for preset, (result, history, elapsed) in runs.items():
        axes.plot(elapsed, [r["valid_ppl"] for r in history], marker="o",
                  label=f"{preset} (test {result['test_ppl']:.1f})")
    axes.set_xlabel("wall-clock minutes")
    axes.set_ylabel("validation perplexity")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(figure)
    print(f"wrote {path}")
    return True


def compare_precisions(preset: str, out_dir: Path, data: Path) -> None:
    """Validation and test ppl and speed of the finished ``auto`` and ``fp32`` runs of ``preset``."""
    rows = ["| precision | epochs | best valid ppl | PTB test ppl | median tokens/s in an epoch | wall-clock (min) | "
            "finished |", "|---|---:|---:|---:|---:|---:|---|"]
    valid = {}
    for name in ("auto", "fp32"):
        checkpoint = out_dir / f"ptb-{preset}-{name}.pt"
        last = last_state_path(checkpoint)
        train = load_checkpoint(last).train
        finished = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.stat().st_mtime))
        history = train["history"]
        _, stdout = run_rnnlm("eval", checkpoint, data / "test.txt", "--json", "-q")
        test_ppl = json.loads(stdout)["total"]["ppl"]
        valid[name] = min(record["valid_ppl"] for record in history)
        speed = statistics.median(record["tokens_per_second"] for record in history)
        minutes = cumulative_elapsed(history)[-1] / 60
        rows.append(f"| {name} ({train['precision']}) | {len(history)} | {valid[name]:.2f} | {test_ppl:.2f} | "
                    f"{speed:,.0f} | {minutes:.1f} | {finished} |")
    change = 100 * (valid["auto"] - valid["fp32"]) / valid["fp32"]
    body = "\n\n".join([
        f"## bf16 against fp32 on the `{preset}` preset (`bench/presets.py {preset} --compare`)",
        f"The two finished runs of `bench/presets.py {preset}` (auto, which is bf16 on this CPU) and "
        f"`--precision fp32`, same seed. bf16's best validation ppl is {change:+.2f}% from fp32's (the aim: within "
        "2%). The speed column is the median over epochs of tokens/s inside the epoch, which other work on the "
        "machine disturbs least; wall-clock minutes are as measured, see each run's own section for its "
        "circumstances. Runs finished on different days may come from different versions of rnnlm (speed-ups "
        "land between them) and met a machine whose speed drifts, so compare the speed column with care.",
        "\n".join(rows),
    ])
    publish(f"precision-{preset}", body, dry_run=False)


if __name__ == "__main__":
    main()
