"""Sharing the CPU: `rnnlm train` and `rnnlm eval` alone and two at once, with rnnlm's own thread choice and with
two fixed threads (what rnnlm did on 2 cores before it chose).

    python bench/concurrency.py                # writes the "concurrency" section of docs/benchmarks.md
    python bench/concurrency.py --quick        # the small architecture only, shorter runs; prints, writes nothing
    python bench/concurrency.py --rounds 2     # every measurement twice, alternated; the table shows the mean

Workloads, on PTB (../shared/data/ptb), each with the architecture of a preset (small: 2 x 200 LSTM, bptt 20;
medium: 2 x 650 LSTM, bptt 35, dropout 0.5; both batch 20 and bf16 where the CPU has it):

- train: `rnnlm train --preset NAME --max-time S`; its speed is training tokens per second inside the epochs
  (the metrics records' sums), so start-up and the validation at the stop do not count;
- eval: `rnnlm eval CKPT FILE` on the validation text (stream context, fp32; medium on its first quarter); its
  speed is the tokens scored per second of the whole process.

Each workload runs under two thread settings: auto (no --threads: rnnlm's choice) and `--threads 2`; each alone,
then as two identical processes started together. Two evaluations started together may not end together; the
later one then runs alone for its last moments, which flatters the pair a little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, publish, run_rnnlm, tokenized, training_time

SETTINGS = {"auto": [], "--threads 2": ["--threads", "2"]}


def start(args: list[str]) -> tuple[subprocess.Popen, float]:
    command = [sys.executable, "-m", "rnnlm_cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), time.perf_counter()


def finish(process: subprocess.Popen, started: float) -> tuple[float, str]:
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"{' '.join(process.args)} failed:\n{stderr}")
    return seconds, stdout


def together(commands: list[list[str]]) -> list[tuple[float, str]]:
    """Run the commands at once; each one's wall-clock seconds and stdout."""
    running = [start(command) for command in commands]
    return [finish(process, started) for process, started in running]


def train_speed(stdout: str) -> float:
    tokens, seconds = training_time(json.loads(stdout)["history"])
    return tokens / seconds


def measure(workload: str, preset: str, data: Path, work: Path, seconds: float, rounds: int) -> dict:
    """Tokens per second alone and in a pair (each process), for every thread setting, averaged over rounds."""
    valid = SHARED_DATA / "ptb" / "valid.txt"
    text = valid
    if workload == "eval" and preset == "medium":  # a quarter: two fixed-thread processes crawl
        text = work / "valid-quarter.txt"
        lines = valid.read_text(encoding="utf-8").splitlines(keepends=True)
        text.write_text("".join(lines[: len(lines) // 4]), encoding="utf-8")
    checkpoint = work / f"{preset}.pt"
    if workload == "eval" and not checkpoint.exists():  # any weights score at the same speed
        run_rnnlm("train", data, "--out", checkpoint, "--preset", preset, "--max-time", "5", "--force", "-q")

    def command(setting: str, copy: int) -> list[str]:
        if workload == "train":
            return ["train", data, "--out", work / f"{preset}-{copy}.pt", "--preset", preset, "--max-time",
                    str(seconds), "--force", "--json", "-q", *SETTINGS[setting]]
        return ["eval", checkpoint, text, "--json", "-q", *SETTINGS[setting]]

    def speeds(results: list[tuple[float, str]]) -> list[float]:
        if workload == "train":
            return [train_speed(stdout) for _, stdout in results]
        return [json.loads(stdout)["total"]["tokens"] / wall for wall, stdout in results]

    runs: dict[str, dict[str, list[float]]] = {s: {"alone": [], "pair": []} for s in SETTINGS}
    for _ in range(rounds):
        for setting in SETTINGS:
            runs[setting]["alone"] += speeds(together([command(setting, 0)]))
            runs[setting]["pair"] += speeds(together([command(setting, 0), command(setting, 1)]))
            print(f"{workload} {preset} {setting}: alone {runs[setting]['alone'][-1]:,.0f}, pair "
                  f"{runs[setting]['pair'][-2]:,.0f} + {runs[setting]['pair'][-1]:,.0f} tokens/s", flush=True)
    return {setting: {key: statistics.mean(values) for key, values in runs[setting].items()}
            | {"pair_min": min(runs[setting]["pair"])} for setting in SETTINGS}


def table(results: dict[tuple[str, str], dict]) -> str:
    rows = ["| workload | threads | alone, tokens/s | each of two at once, tokens/s | share of alone (the slower) | "
            "two together / one alone | alone / alone with 2 fixed threads |", "|---|---|---:|---:|---:|---:|---:|"]
    for (workload, preset), by_setting in results.items():
        fixed_alone = by_setting["--threads 2"]["alone"]
        for setting, figures in by_setting.items():
            rows.append(f"| {workload} {preset} | {setting} | {figures['alone']:,.0f} | {figures['pair']:,.0f} | "
                        f"{figures['pair_min'] / figures['alone']:.0%} | "
                        f"{2 * figures['pair'] / figures['alone']:.2f}x | "
                        f"{figures['alone'] / fixed_alone:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small only, 15 s trainings; print, write nothing")
    parser.add_argument("--rounds", type=int, default=1, help="alternated repetitions of every measurement")
    parser.add_argument("--seconds", type=float, default=None, help="--max-time of each training (default 40/60)")
    args = parser.parse_args()
    data = tokenized(SHARED_DATA / "ptb", "ptb-data")
    presets = ["small"] if args.quick else ["small", "medium"]
    results = {}
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as work:
        for preset in presets:
            seconds = args.seconds or (15 if args.quick else {"small": 40, "medium": 60}[preset])
            for workload in ("train", "eval"):
                results[(workload, preset)] = measure(workload, preset, data, Path(work), seconds, args.rounds)
    body = f"""## Sharing the CPU (`bench/concurrency.py`)

Measured {began} on {machine()}; {args.rounds} round(s) per figure.

Each workload alone, then two identical processes started together: auto is rnnlm's thread choice (every core
while no other process keeps one busy, one fewer per busy core, checked every 0.5 s; one thread for models under
50,000 multiply-adds per token), `--threads 2` two fixed OpenMP threads, which is what rnnlm ran with on 2 cores
before it chose. "Share of alone" is the slower process of the pair against one process alone with the same
setting; "alone / alone with 2 fixed threads" is what auto costs or gains for a process that has the machine to
itself. Training speed is tokens per second inside the epochs; evaluation speed counts the whole process.

{table(results)}
"""
    publish("concurrency", body, dry_run=args.quick)


if __name__ == "__main__":
    main()
