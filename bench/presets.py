"""Train a preset on a corpus to the end and measure it: wall-clock time, validation curve, test perplexity.

    python bench/presets.py small                   # writes the "preset-small-auto" section of docs/benchmarks.md
    python bench/presets.py small --precision fp32  # the same recipe in fp32, for the bf16 comparison
    python bench/presets.py medium --max-hours 5    # stops cleanly at the budget and reports what it reached
    python bench/presets.py medium --max-hours 2 --resume   # continues that run where it stopped
    python bench/presets.py small --compare         # bf16 against fp32, from the two finished runs above
    python bench/presets.py medium --report         # rewrites the section from the stored run (no training)
    python bench/presets.py small --curves small-fast  # time to quality: the finished runs side by side, and a plot
    python bench/presets.py medium-fast --data ../shared/data/wikitext-2   # another corpus (train/valid/test.txt)

Runs `rnnlm train DATA --preset NAME --out checkpoints/CORPUS-NAME-PRECISION.pt` as one process, then
`rnnlm eval` on the test split with the stream context (the protocol behind the published numbers). CORPUS is
the data directory's name (ptb, wikitext-2). A finished run leaves its record, the test ppl, the time and the
validation curve, in bench/results/presets/CORPUS-NAME-PRECISION.json (tracked), which --curves reads.
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

RECORDS = ROOT / "bench" / "results" / "presets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ptb",
                        help="a directory with train.txt, valid.txt and test.txt; its name names the runs")
    parser.add_argument("--max-hours", type=float, default=None, help="stop training after this long")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (a dry run)")
    parser.add_argument("--resume", action="store_true", help="continue the run in checkpoints/ where it stopped")
    parser.add_argument("--compare", action="store_true", help="compare the finished auto and fp32 runs")
    parser.add_argument("--report", action="store_true", help="rewrite the section from the stored run, no training")
    parser.add_argument("--curves", metavar="PRESET,...", default=None,
                        help="no training: validation ppl against minutes of the finished runs of this preset and "
                             "these (their records in bench/results/presets/), side by side, as a table and "
                             "docs/time-to-quality-CORPUS-PRESET-PRECISION.svg (needs matplotlib)")
    args = parser.parse_args()

    out_dir = ROOT / "checkpoints"
    if args.curves:
        time_to_quality([args.preset, *args.curves.split(",")], args.precision, args.data.name)
        return
    if args.compare:
        compare_precisions(args.preset, out_dir, args.data)
        return
    data_dir = tokenized(args.data, f"{args.data.name}-data")
    checkpoint = out_dir / f"{args.data.name}-{args.preset}-{args.precision}.pt"
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
    if not args.epochs:  # what --curves reads
        write_record(args, run, test["ppl"], seconds)
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
        f"**{corpus_label(args.data.name)} test ppl {test['ppl']:.2f}** (`rnnlm eval`, stream context; "
        f"{test['tokens']:,} tokens) after "
        f"{run['epochs']} epoch{'s' * (run['epochs'] != 1)}"
        f"{'' if history[-1]['complete'] else ' and part of the next'} ({run['stop_reason']}); "
        f"best validation ppl {run['best_valid_ppl']:.2f} "
        f"at epoch {run['best_epoch']}; training took **{seconds / 60:.1f} minutes** of wall-clock time ({how}).",
        curve(history),
    ])
    publish(section(args), body, dry_run=bool(args.epochs))


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
        publish(section(self.args), body, dry_run=False)


def heading(args: argparse.Namespace, precision: str) -> list[str]:
    """The section's title and its recipe, machine and command paragraph."""
    data = "" if args.data == SHARED_DATA / "ptb" else f" --data {args.data}"
    command = (f"python bench/presets.py {args.preset} --precision {args.precision}{data}"
               f"{f' --max-hours {args.max_hours:g}' if args.max_hours else ''}"
               f"{f' --epochs {args.epochs}' if args.epochs else ''}{' --resume' if args.resume else ''}"
               f"{' --report' if args.report else ''}")
    on = "" if args.data.name == "ptb" else f" on {corpus_label(args.data.name)}"
    return [f"## Preset `{args.preset}`{on}, precision {args.precision} ({precision}) (`bench/presets.py`)",
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


def section(args: argparse.Namespace) -> str:
    """The run's section of docs/benchmarks.md (PTB runs keep their older, shorter names)."""
    corpus = "" if args.data.name == "ptb" else f"{args.data.name}-"
    return f"preset-{corpus}{args.preset}-{args.precision}"


def corpus_label(corpus: str) -> str:
    return {"ptb": "PTB", "wikitext-2": "WikiText-2"}.get(corpus, corpus)


def record_path(corpus: str, preset: str, precision: str) -> Path:
    return RECORDS / f"{corpus}-{preset}-{precision}.json"


def write_record(args: argparse.Namespace, run: dict, test_ppl: float, seconds: float) -> None:
    """What --curves reads of a run, kept in the repository (the checkpoints stay on the machine that trained)."""
    history = run["history"]
    record = {"preset": args.preset, "precision": run["precision"], "corpus": args.data.name, "test_ppl": test_ppl,
              "seconds": seconds, "epochs": run["epochs"], "stop_reason": run["stop_reason"],
              "best_valid_ppl": run["best_valid_ppl"],
              "machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "curve": [{"epoch": epoch_label(entry), "valid_ppl": entry["valid_ppl"], "minutes": since / 60}
                        for entry, since in zip(history, cumulative_elapsed(history))]}
    path = record_path(args.data.name, args.preset, args.precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")


def minute_marks(longest: float) -> range:
    """Whole-minute marks up to ``longest``, at most 25 of them, a round number of minutes apart."""
    step = next(step for step in (1, 2, 5, 10, 15, 20, 30, 60, 120) if longest / step <= 25)
    return range(step, step * math.ceil(longest / step) + 1, step)


def time_to_quality(presets: list[str], precision: str, corpus: str) -> None:
    """The finished runs of ``presets`` side by side: each one's validation ppl against wall-clock minutes, its test
    ppl and its time as a share of the first one's; a table in docs/benchmarks.md and a plot beside it."""
    runs = {}
    for preset in presets:
        path = record_path(corpus, preset, precision)
        if not path.exists():
            sys.exit(f"no record of a finished run at {path.relative_to(ROOT)}: run bench/presets.py {preset} first")
        runs[preset] = json.loads(path.read_text(encoding="utf-8"))
    first = runs[presets[0]]["seconds"]
    label = corpus_label(corpus)
    rows = [f"| preset | recipe | epochs | best valid ppl | {label} test ppl | wall-clock (min) | of the first's time |"
            " finished |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for preset, run in runs.items():  # a run stopped by --max-hours and not yet resumed to its end is marked
        unfinished = "" if run["stop_reason"] == "completed" else " (unfinished)"
        rows.append(f"| `{preset}`{unfinished} | {PRESET_SOURCES[preset]} | {run['epochs']} | "
                    f"{run['best_valid_ppl']:.2f} | {run['test_ppl']:.2f} | {run['seconds'] / 60:.1f} | "
                    f"{100 * run['seconds'] / first:.0f}% | {run['finished']} |")
    marks = minute_marks(max(run["curve"][-1]["minutes"] for run in runs.values()))
    curve_rows = ["| minutes | " + " | ".join(f"`{preset}` valid ppl" for preset in presets) + " |",
                  "|---:|" + "---:|" * len(presets)]
    for minutes in marks:  # each run's best validation ppl so far, at every mark
        cells = []
        for run in runs.values():
            seen = [point["valid_ppl"] for point in run["curve"] if point["minutes"] <= minutes]
            cells.append(f"{min(seen):.2f}" if seen else "")
        curve_rows.append(f"| {minutes} | " + " | ".join(cells) + " |")
    name = f"{corpus}-{presets[0]}-{precision}"
    picture = ROOT / "docs" / f"time-to-quality-{name}.svg"
    drawn = plot_time_to_quality(runs, picture)
    machines = sorted({run["machine"] for run in runs.values()})
    notes = [f"`{preset}`: {run['note']}" for preset, run in runs.items() if run.get("note")]
    data = "" if corpus == "ptb" else f" --data DATA/{corpus}"
    body = "\n\n".join([
        f"## Time to quality on {label} (`bench/presets.py {presets[0]}{data} --curves {','.join(presets[1:])}`)",
        f"Each run is `python bench/presets.py PRESET --precision {precision}{data}`: one whole `rnnlm train` "
        "process, then `rnnlm eval` of its best checkpoint on the test split; their records are in "
        f"`bench/results/presets/`. Runs measured one at a time, never beside another; "
        f"{'the machine' if len(machines) == 1 else 'the machines'}: {'; '.join(machines)}."
        + "".join(f" {note}" for note in notes),
        "\n".join(rows),
        "The best validation ppl each run had reached after so many wall-clock minutes of its process (a run "
        "that has ended keeps its last value):"
        + (f" ![validation ppl against minutes]({picture.name})" if drawn else ""),
        "\n".join(curve_rows),
    ])
    publish(f"time-to-quality-{name}", body, dry_run=False)


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
    for preset, run in runs.items():
        axes.plot([point["minutes"] for point in run["curve"]], [point["valid_ppl"] for point in run["curve"]],
                  marker="o", markersize=3, label=f"{preset} (test {run['test_ppl']:.1f})")
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
    rows = [f"| precision | epochs | best valid ppl | {corpus_label(data.name)} test ppl | median tokens/s in an epoch "
            "| wall-clock (min) | finished |", "|---|---:|---:|---:|---:|---:|---|"]
    valid = {}
    for name in ("auto", "fp32"):
        checkpoint = out_dir / f"{data.name}-{preset}-{name}.pt"
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
