"""Helpers shared by the benchmark scripts: machine description and docs/benchmarks.md sections."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
SHARED_DATA = ROOT.parent / "shared" / "data"

HEADER = """# Benchmarks

Figures written by the scripts in `bench/` (not part of the test suite); each script rewrites its
own section. Every ratio compares runs measured in the same script run on the same machine.
"""


def machine() -> str:
    """One line naming the CPU, its cores, its bf16 support and the torch build."""
    import torch

    model, flags = "unknown CPU", ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", cpuinfo).group(1).strip()
        flags = re.search(r"flags\s*:\s*(.*)", cpuinfo).group(1)
    except (OSError, AttributeError):
        pass
    bf16 = [name for name in ("avx512_bf16", "amx_bf16") if name in flags.split()]
    return (f"{model}, {os.cpu_count()} logical cores, bf16 instructions: {', '.join(bf16) or 'none'}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else HEADER
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text, encoding="utf-8")


def publish(name: str, body: str, dry_run: bool) -> None:
    """Print the section (a dry run) or write it into docs/benchmarks.md."""
    if dry_run:
        print(body)
    else:
        write_section(name, body)
        print(f"wrote the {name} section of docs/benchmarks.md")


def tokenized(corpus: Path, name: str) -> Path:
    """checkpoints/NAME: ``corpus``'s train / valid / test splits as `rnnlm tokenize` writes them (word level),
    tokenized on the first call and reused after."""
    data_dir = ROOT / "checkpoints" / name
    if not (data_dir / "meta.json").exists():
        run_rnnlm("tokenize", corpus / "train.txt", "--valid", corpus / "valid.txt", "--test", corpus / "test.txt",
                  "--out", data_dir, "-q")
    return data_dir


def training_time(history: list[dict]) -> tuple[float, float]:
    """(training tokens, seconds spent training) of a run's metrics records, validation excluded.

    A record's ``seconds`` and ``tokens_per_second`` cover its epoch up to that validation, so only the last
    record of each epoch counts (with --valid-every an epoch has several)."""
    last = {record["epoch"]: record for record in history}
    tokens = sum(record["tokens_per_second"] * record["seconds"] for record in last.values())
    return tokens, sum(record["seconds"] for record in last.values())


def timed(function, *args):
    """Wall-clock seconds of ``function(*args)`` and its value."""
    start = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - start, value


def run_rnnlm(*args: str, while_running: Callable[[], None] | None = None, every: float = 30.0) -> tuple[float, str]:
    """Wall-clock seconds of a whole `rnnlm` process (start-up included) and its stdout.

    ``while_running`` is called every ``every`` seconds until the process ends (to report on long runs).
    """
    command = [sys.executable, "-m", "rnnlm_cli", *map(str, args)]
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        while True:
            try:
                stdout, stderr = process.communicate(timeout=every if while_running else None)
                break
            except subprocess.TimeoutExpired:  # only with a callback; communicate() may be called again after it
                if while_running is not None:
                    while_running()
    seconds = time.perf_counter() - start
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command, stdout, stderr)
    return seconds, stdout
