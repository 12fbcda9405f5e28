"""How far `rnnlm eval` scores move with --batch-size (line context), per token and in total.

    python bench/exactness.py CKPT TEXT [CKPT TEXT ...] [--dry-run]

Line context batches lines longest first and pads them; a line's recurrence and softmax then run inside a
different batch shape, so fp32 sums are taken in another order. Each pair is scored with --batch-size 1 and 64
(line context, fp32) and the per-token log-probabilities compared; the "exactness" section of
docs/benchmarks.md gets the largest per-token difference and the relative difference of the totals.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, publish

from rnnlm_cli.config import EvalConfig
from rnnlm_cli.jobs.evaluate import iter_line_scores


def scores(checkpoint: str, text: str, batch_size: int) -> tuple[np.ndarray, list[int]]:
    lines = list(iter_line_scores(EvalConfig(checkpoint, [text], context="line", batch_size=batch_size)))
    return np.concatenate([line.token_nll for line in lines]), [line.tokens for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="CKPT TEXT pairs")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        sys.exit("give CKPT TEXT pairs")
    rows = []
    for checkpoint, text in zip(args.pairs[::2], args.pairs[1::2]):
        one, lengths = scores(checkpoint, text, 1)
        many, _ = scores(checkpoint, text, 64)
        difference = np.abs(one - many)
        rows.append(f"| `{Path(checkpoint).name}` | `{text}` | {len(lengths):,} | {max(lengths):,} | "
                    f"{difference.max():.2e} | {difference.mean():.2e} | "
                    f"{abs(one.sum() - many.sum()) / one.sum():.1e} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        "## Exactness across batch sizes (`bench/exactness.py`)", "",
        f"Machine: {machine()}.", "",
        "Line context, fp32: every token's nll with `--batch-size 1` against `--batch-size 64`.", "",
        "| checkpoint | text | lines | longest line (tokens) | largest per-token difference (nats) | "
        "mean per-token difference | relative difference of the totals |",
        "|---|---|---:|---:|---:|---:|---:|", *rows])
    publish("exactness", body, args.dry_run)


if __name__ == "__main__":
    main()
