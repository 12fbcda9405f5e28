"""Peak memory of tokenizing and evaluating a big generated corpus: it must not grow with the file.

    python bench/memory.py              # 1 GB and 1/16 of it; writes the "memory" section of docs/benchmarks.md
    python bench/memory.py --mb 64      # a quick look: 64 MB and 4 MB; prints, writes nothing

The corpus is generated text: words of a 2,000-word vocabulary drawn with Zipf-like frequencies, lines of
1 to 40 words. Each measurement is one whole `rnnlm` process; its peak resident set size comes from
the kernel (``os.wait4``), so everything the process touched counts: Python, torch, sentencepiece.

- tokenize, word level: the big file as TRAIN (two readings: vocabulary, then encoding);
- tokenize, unigram (sentencepiece, 8,000 pieces): the same file; sentencepiece trains on a sample of
  at most 1 million lines and then encodes every line;
- eval: a 1 x 32 LSTM trained for a minute on a 4 MB sample scores the big file (`--context line`,
  totals only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, publish  # noqa: E402

VOCABULARY = 2000


def generate(path: Path, size: int, seed: int = 0) -> int:
    """Write about ``size`` bytes of generated text to ``path``; its line count."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(VOCABULARY)], dtype=object)
    weights = 1.0 / np.arange(1, VOCABULARY + 1)
    weights /= weights.sum()
    written = lines = 0
    with open(path, "w", encoding="utf-8") as file:
        while written < size:
            lengths = rng.integers(1, 41, 20_000)
            ids = rng.choice(VOCABULARY, int(lengths.sum()), p=weights)
            text = "\n".join(" ".join(line) for line in np.split(words[ids], np.cumsum(lengths)[:-1])) + "\n"
            file.write(text)
            written += len(text)
            lines += len(lengths)
    return lines


def measure(*args: object) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes, stdout) of one whole `rnnlm ARGS` process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "rnnlm_cli", *map(str, args)], stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage, peak RSS included
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"rnnlm {' '.join(map(str, args))} failed:\n{err.read().decode()}")
        return seconds, usage.ru_maxrss * 1024, out.read().decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the big file in MiB (default 1024)")
    parser.add_argument("--work", type=Path, default=None, help="where to write the files (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rnnlm-memory-"))
    work.mkdir(parents=True, exist_ok=True)

    sample = work / "sample.txt"
    generate(sample, 4 << 20, seed=1)
    data = work / "sample-data"
    measure("tokenize", sample, "--out", data, "--force", "-q")
    model = work / "tiny.pt"
    measure("train", data, "--out", model, "--layers", "1", "--emb-size", "32", "--hidden-size", "32",
            "--optimizer", "adam", "--lr", "0.01", "--max-time", "60", "--force", "-q")

    rows = []
    for mb in (args.mb // 16, args.mb):
        big = work / f"big-{mb}.txt"
        started = time.perf_counter()
        lines = generate(big, mb << 20)
        print(f"generated {big} ({big.stat().st_size:,} bytes, {lines:,} lines) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        size = big.stat().st_size
        for name, command in (
            ("tokenize --kind word", ["tokenize", big, "--out", work / "d-word", "--force", "--json", "-q"]),
            ("tokenize --kind unigram", ["tokenize", big, "--kind", "unigram", "--vocab-size", "8000",
                                         "--out", work / "d-unigram", "--force", "--json", "-q"]),
            ("eval --context line", ["eval", model, big, "--context", "line", "--json"]),
        ):
            seconds, peak, stdout = measure(*command)
            tokens = (json.loads(stdout)["total"]["tokens"] if command[0] == "eval"
                      else json.loads(stdout)["splits"][0]["tokens"])
            rows.append((name, size, lines, tokens, seconds, peak))
            print(rows[-1], flush=True)
        big.unlink()

    table = ["| command | file | lines | tokens | seconds | MB/s | peak RSS |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, size, lines, tokens, seconds, peak in rows:
        table.append(f"| `rnnlm {name}` | {size / 2**20:,.0f} MiB | {lines:,} | {tokens:,} | {seconds:,.0f} | "
                     f"{size / 2**20 / seconds:.1f} | {peak / 2**20:,.0f} MiB |")
    peaks: dict[str, list[int]] = {}
    for name, *_, peak in rows:
        peaks.setdefault(name, []).append(peak)
    body = "\n\n".join([
        "## Memory on a big corpus (`bench/memory.py`)",
        f"Machine: {machine()}. Command: `python bench/memory.py --mb {args.mb}`. Generated word-level text "
        f"({VOCABULARY:,}-word vocabulary, 1-40 words per line); peak RSS of each whole process from the kernel.",
        "\n".join(table),
        "Growing the file 16-fold multiplied peak RSS by "
        + ", ".join(f"{peaks[name][1] / peaks[name][0]:.2f}x ({name})" for name in peaks)
        + ". Tokenize reads the text a chunk of 10,000 lines at a time (the training file twice: vocabulary, "
        "then encoding); eval scores a window of lines at a time and keeps running sums. sentencepiece's trainer "
        "holds the lines it trains on: all of them for the smaller file, a uniform sample of 1,000,000 lines "
        "for the bigger one, so its memory grows with the file only up to that cap.",
    ])
    publish("memory", body, dry_run=args.mb != 1024)


if __name__ == "__main__":
    main()
