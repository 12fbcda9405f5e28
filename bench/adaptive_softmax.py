"""Full against adaptive softmax on WikiText-2 (33k words), for the same wall-clock time.

    python bench/adaptive_softmax.py                 # 10 minutes each; writes the "adaptive-softmax" section
    python bench/adaptive_softmax.py --minutes 1 -n  # a quick look; prints, writes nothing

Both runs are one `rnnlm train` process with the same model (2 x 200 LSTM, dropout 0.2, bptt 35, batch 20,
SGD at lr 20 with clip 0.25, plateau decay: the defaults), the same seed and the same --max-time; only
--softmax differs (adaptive: --cutoffs 2000,10000, as Grave et al. 2017 used on WikiText-2). Reported:
training tokens per second inside the epochs (validation excluded) and of the whole process, and the
validation ppl each run had reached when the budget ran out (rnnlm validates when it stops, so every run
ends with a measurement). The ratio compares two runs measured one after the other on the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ROOT,
    SHARED_DATA,
    machine,
    publish,
    run_rnnlm,
    tokenized,
    training_time,
)

HEADS = {"full": [], "adaptive": ["--softmax", "adaptive", "--cutoffs", "2000,10000"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each run")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "wikitext-2")
    parser.add_argument("-n", "--dry-run", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args()

    out_dir = ROOT / "checkpoints"
    data_dir = tokenized(args.data, "wt2-data")
    runs = {}
    for head, options in HEADS.items():
        print(f"training with the {head} softmax for {args.minutes:g} minutes", file=sys.stderr)
        seconds, stdout = run_rnnlm("train", data_dir, "--out", out_dir / f"wt2-{head}.pt", "--epochs", "1000",
                                    "--max-time", args.minutes * 60, "--seed", "1", "--force", "--json", "-q",
                                    *options)
        runs[head] = {"process_seconds": seconds, **json.loads(stdout)}
    results = ROOT / "bench" / "results" / "adaptive_softmax.json"
    if not args.dry_run:
        results.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M"), "minutes": args.minutes,
                                       "runs": runs}, indent=1) + "\n", encoding="utf-8")
    publish("adaptive-softmax", report(runs, args.minutes, data_dir), args.dry_run)


def _speeds(run: dict) -> tuple[float, float, int]:
    """(tokens/s inside the epochs, tokens/s of the whole process, training tokens) of one run."""
    tokens, seconds = training_time(run["history"])
    return tokens / seconds, tokens / run["process_seconds"], round(tokens)


def report(runs: dict, minutes: float, data_dir: Path) -> str:
    meta = json.loads((data_dir / "meta.json").read_text())
    vocab = meta["tokenizer"]["vocab_size"]
    train_tokens = meta["splits"]["train"]["tokens"]
    rows = []
    for head, run in runs.items():
        inside, whole, tokens = _speeds(run)
        last = run["history"][-1]
        rows.append(f"| {' '.join([head, *HEADS[head][2:]])} | {inside:,.0f} | "
                    f"{whole:,.0f} | {tokens / train_tokens:.2f} | {last['valid_ppl']:.2f} | "
                    f"{run['best_valid_ppl']:.2f} |")
    full_speed, adaptive_speed = _speeds(runs["full"])[0], _speeds(runs["adaptive"])[0]
    full_ppl, adaptive_ppl = runs["full"]["best_valid_ppl"], runs["adaptive"]["best_valid_ppl"]
    return f"""## Adaptive softmax on WikiText-2 (`bench/adaptive_softmax.py`)

Machine: {machine()}. Vocabulary {vocab:,} words, {train_tokens:,} training tokens. Each run: one
`rnnlm train` process (2 x 200 LSTM, the default recipe, precision auto) stopped by `--max-time {minutes * 60:g}`;
only `--softmax` differs.

| head | tokens/s in epochs | tokens/s whole process | epochs done | valid ppl at the end | best valid ppl |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

The adaptive head trains **{adaptive_speed / full_speed:.2f}x** as many tokens per second as the full softmax;
after the same {minutes:g} minutes its best validation ppl is {adaptive_ppl:.2f} against {full_ppl:.2f}
(**{100 * (adaptive_ppl / full_ppl - 1):+.1f}%**).
"""


if __name__ == "__main__":
    main()
