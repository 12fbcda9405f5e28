"""Validation perplexity through one epoch: does it depend on where in the epoch the model is?

    python bench/epoch_position.py small               # after `python bench/presets.py small`; about 2 minutes
    python bench/epoch_position.py medium --points 10  # after the medium preset's run; about 7 minutes

Continues a finished preset run (``checkpoints/ptb-NAME-auto.last.pt``, written by `bench/presets.py`) for one
more epoch with `rnnlm train --resume ... --epochs E+1 --valid-every K`, in a copy in a temporary directory
(``checkpoints/`` stays as it was), so that the model is validated ``--points`` times at evenly spaced steps
of the epoch at the learning rate the recipe's schedule gives it there. Writes the section
"epoch-position-NAME" of docs/benchmarks.md: the validation ppl at each point, from the end of the recipe
(0% of the extra epoch) to the end of the extra epoch (100%).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED_DATA, machine, publish, run_rnnlm, tokenized

from rnnlm_cli.checkpoint import load_checkpoint
from rnnlm_cli.jobs.train import last_state_path, metrics_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=["small", "medium"])
    parser.add_argument("--points", type=int, default=16, help="validations spread over the extra epoch")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ptb")
    args = parser.parse_args()

    run = ROOT / "checkpoints" / f"ptb-{args.preset}-auto.pt"
    if not last_state_path(run).exists():
        sys.exit(f"{last_state_path(run)} is missing: run `python bench/presets.py {args.preset}` first")
    train = load_checkpoint(last_state_path(run)).train
    before = train["history"]
    if not before[-1]["complete"]:
        sys.exit(f"{run}: its run stopped inside an epoch; finish it with `python bench/presets.py {args.preset} "
                 "--resume` first")
    data_dir = tokenized(args.data, "ptb-data")
    batches = before[-1]["step"] // train["epoch"]  # steps per epoch (the same in every epoch)
    every = math.ceil(batches / args.points)

    with tempfile.TemporaryDirectory(prefix="rnnlm-position-") as work:
        copy = Path(work) / run.name
        for path in (run, last_state_path(run), metrics_path(run)):
            shutil.copy2(path, Path(work) / path.name)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        seconds, stdout = run_rnnlm("train", data_dir, "--resume", copy, "--epochs", train["epoch"] + 1,
                                    "--valid-every", every, "--json", "-q")
    records = json.loads(stdout)["history"][len(before):]

    start = before[-1]
    rows = [f"| share of epoch {train['epoch'] + 1} | step | valid ppl | change from 0% |", "|---:|---:|---:|---:|",
            f"| 0% (end of epoch {train['epoch']}) | {start['step']:,} | {start['valid_ppl']:.2f} | |"]
    for record in records:
        share = (record["step"] - start["step"]) / batches
        rows.append(f"| {100 * share:.0f}% | {record['step']:,} | {record['valid_ppl']:.2f} | "
                    f"{100 * (record['valid_ppl'] / start['valid_ppl'] - 1):+.2f}% |")
    best = min(records, key=lambda record: record["valid_ppl"])
    body = "\n\n".join([
        f"## Validation ppl through one epoch, preset `{args.preset}` (`bench/epoch_position.py`)",
        f"Machine: {machine()}. Command: `python bench/epoch_position.py {args.preset} --points {args.points}`, "
        f"started {started}; {seconds / 60:.1f} minutes.",
        f"The finished run of the `{args.preset}` preset (`checkpoints/ptb-{args.preset}-auto.last.pt`, "
        f"{train['epoch']} epochs) trained one epoch more (epoch {train['epoch'] + 1}, lr {records[0]['lr']:.4g} "
        f"as its schedule gives), validated after every {every} of its {batches:,} steps (`--valid-every {every}`) "
        "on the whole validation text (stream context).",
        "\n".join(rows),
        f"Lowest: {best['valid_ppl']:.2f} at {100 * (best['step'] - start['step']) / batches:.0f}% of the epoch, "
        f"against {start['valid_ppl']:.2f} at its start and {records[-1]['valid_ppl']:.2f} at its end.",
    ])
    publish(f"epoch-position-{args.preset}", body, dry_run=False)


if __name__ == "__main__":
    main()
