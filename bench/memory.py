"""Peak memory and throughput of tokenizing, training on and evaluating a big generated corpus.

    python bench/memory.py                          # 1 GB and 1/16 of it; writes the "memory" section
    python bench/memory.py --steps tokenize,train   # re-measure some rows; the stored others stay
    python bench/memory.py --mb 64                  # a quick look: 64 MB and 4 MB; prints, writes nothing

The corpus is generated text: words of a 2,000-word vocabulary drawn with Zipf-like frequencies, lines of
1 to 40 words. Each measurement is one whole `rnnlm` process; its peak resident set size comes from
the kernel (``os.wait4``: the largest of the process and its worker processes, each counted alone).

- tokenize, word level: the big file as TRAIN (two readings: vocabulary, then encoding), with a small
  generated valid split;
- tokenize, unigram (sentencepiece, 8,000 pieces): the same file, encoded by worker processes
  (`--jobs`, one per core) and by one process (`--jobs 1`); sentencepiece trains on a sample of at
  most 1 million lines either way;
- train: a 2 x 200 LSTM (the default recipe) on the word-level dataset for --train-seconds, reading
  its BPTT windows from the memory-mapped id file; tokens/s inside the epoch;
- eval: a 1 x 32 LSTM trained for a minute on a 4 MB sample scores the big file (`--context line`,
  totals only).

Raw figures go to bench/results/memory.json (each row with its time of measurement).
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
from common import machine, publish

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
    parser.add_argument("--steps", default="tokenize,train,eval", help="which rows to measure (comma-separated)")
    parser.add_argument("--train-seconds", type=float, default=120.0, help="training budget per file")
    parser.add_argument("--work", type=Path, default=None, help="where to write the files (default: a temp dir)")
    parser.add_argument("--report", action="store_true", help="rewrite the section from the stored rows only")
    args = parser.parse_args()
    results = Path(__file__).resolve().parent / "results" / "memory.json"
    if args.report:
        publish("memory", report(json.loads(results.read_text()), 1024), dry_run=False)
        return
    steps = set(args.steps.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="rnnlm-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    valid = work / "valid.txt"
    generate(valid, 256 << 10, seed=2)
    model = work / "tiny.pt"
    if "eval" in steps:
        sample = work / "sample.txt"
        generate(sample, 4 << 20, seed=1)
        measure("tokenize", sample, "--out", work / "sample-data", "--force", "-q")
        measure("train", work / "sample-data", "--out", model, "--layers", "1", "--emb-size", "32",
                "--hidden-size", "32", "--optimizer", "adam", "--lr", "0.01", "--max-time", "60", "--force", "-q")

    rows = []
    for mb in (args.mb // 16, args.mb):
        big = work / f"big-{mb}.txt"
        started = time.perf_counter()
        lines = generate(big, mb << 20)
        print(f"generated {big} ({big.stat().st_size:,} bytes, {lines:,} lines) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        size = big.stat().st_size
        words = work / "d-word"
        commands = []
        if steps & {"tokenize", "train"}:
            commands.append(("tokenize --kind word", ["tokenize", big, "--valid", valid, "--out", words, "--force"]))
        if "tokenize" in steps:
            for jobs in ("", "1"):
                commands.append((f"tokenize --kind unigram{' --jobs 1' if jobs else ''}",
                                 ["tokenize", big, "--kind", "unigram", "--vocab-size", "8000", "--out",
                                  work / "d-unigram", "--force", *(["--jobs", jobs] if jobs else [])]))
        if "train" in steps:
            commands.append(("train (2 x 200 LSTM)", ["train", words, "--out", work / "big.pt", "--max-time",
                                                      args.train_seconds, "--force"]))
        if "eval" in steps:
            commands.append(("eval --context line", ["eval", model, big, "--context", "line"]))
        for name, command in commands:
            seconds, peak, stdout = measure(*command, "--json", "-q")
            result = json.loads(stdout)
            encoders = (1 if "--jobs" in command else min(os.cpu_count() or 1, 8)) if command[0] == "tokenize" else 1
            row = {"name": name, "mb": mb, "size": size, "lines": lines, "seconds": seconds, "peak": peak,
                   "processes": encoders, "measured": time.strftime("%Y-%m-%d %H:%M")}
            if command[0] == "eval":
                row["tokens"] = result["total"]["tokens"]
            elif command[0] == "train":
                history = result["history"]
                row["tokens"] = int(sum(r["tokens_per_second"] * r["seconds"] for r in history))
                row["tokens_per_second"] = row["tokens"] / sum(r["seconds"] for r in history)
            else:
                row["tokens"] = result["splits"][0]["tokens"]
            rows.append(row)
            print(row, flush=True)
        big.unlink()

    if args.mb == 1024:  # the published figures: keep the rows not measured this time
        measured = {(row["name"], row["mb"]) for row in rows}
        stored = json.loads(results.read_text()) if results.exists() else []
        rows = [row for row in stored if (row["name"], row["mb"]) not in measured] + rows
        results.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    publish("memory", report(rows, args.mb), dry_run=args.mb != 1024)


ORDER = ("tokenize --kind word", "tokenize --kind unigram", "tokenize --kind unigram --jobs 1",
         "train (2 x 200 LSTM)", "eval --context line")


def report(rows: list[dict], mb: int) -> str:
    rows = sorted(rows, key=lambda row: (row["mb"], ORDER.index(row["name"])))
    table = ["| command | file | lines | tokens | encoding processes | seconds | MB/s | tokens/s | peak RSS "
             "| measured |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        training = "tokens_per_second" in row
        speed = f"{row['tokens_per_second']:,.0f} (in epoch)" if training else f"{row['tokens'] / row['seconds']:,.0f}"
        throughput = "" if training else f"{row['size'] / 2**20 / row['seconds']:.1f}"
        table.append(f"| `rnnlm {row['name']}` | {row['size'] / 2**20:,.0f} MiB | {row['lines']:,} | "
                     f"{row['tokens']:,} | {row.get('processes', 1) if row['name'].startswith('tokenize') else ''} | "
                     f"{row['seconds']:,.0f} | {throughput} | {speed} | "
                     f"{row['peak'] / 2**20:,.0f} MiB | {row['measured']} |")
    peaks: dict[str, list[int]] = {}
    for row in rows:
        peaks.setdefault(row["name"], []).append(row["peak"])
    growth = ", ".join(f"{values[-1] / values[0]:.2f}x ({name})" for name, values in peaks.items() if len(values) > 1)
    return "\n\n".join([
        "## Memory on a big corpus (`bench/memory.py`)",
        f"Machine: {machine()}. Command: `python bench/memory.py --mb {mb}` (rows re-measured with `--steps` "
        f"carry their own date). Generated word-level text ({VOCABULARY:,}-word vocabulary, 1-40 words per "
        "line); peak RSS from the kernel: the largest of the process and its workers, each counted alone.",
        "\n".join(table),
        f"Growing the file 16-fold multiplied peak RSS by {growth}. Tokenize reads the text a chunk of 10,000 "
        "lines at a time (the training file twice: vocabulary, then encoding) and encodes the chunks in worker "
        "processes, at most two per worker in flight; train reads its windows from the memory-mapped id file "
        "(pages it has read count in RSS while they stay cached; the kernel can drop them at any time); eval "
        "scores a window of lines at a time and keeps running sums. sentencepiece's trainer holds the lines it "
        "trains on: all of them for the smaller file, a uniform sample of 1,000,000 lines for the bigger one, "
        "so its memory grows with the file only up to that cap.",
    ])


if __name__ == "__main__":
    main()
