"""Training throughput on PTB: `rnnlm train` against a plain PyTorch fp32 loop, in one run.

    python bench/train_speed.py                 # small and medium; writes the "train-speed" section
    python bench/train_speed.py --preset small  # re-measures one row; the other comes from bench/results/
    python bench/train_speed.py --quick         # small only, 20 s per run; prints, writes nothing
    python bench/train_speed.py --preset small --rounds 4  # more alternations where the speed drifts

For each architecture (the small and medium presets: 2x200 LSTM with bptt 20, 2x650 LSTM with
bptt 35 and dropout 0.5; batch 20) the script alternates two kinds of run, --rounds times each (default 2):

- plain loop: the training loop a user writes from the PyTorch word_language_model example
  (sequence-first nn.LSTM, nn.Dropout, mean cross-entropy, clip_grad_norm_, SGD), fp32, timed in
  this process over the PTB training stream;
- rnnlm: the whole `rnnlm train DIR --preset NAME --max-time S` process, timed from start to exit:
  start-up, data loading, the validation pass at the stop and checkpoint writing all count, while
  only training tokens count in the numerator.

Reported: mean tokens/s of each, and their ratio. Each row's figures are kept in
bench/results/train_speed.json under the machine they ran on, with the time they were measured, so one
row can be measured again (on a quiet machine) without re-running the other, and the section shows one
table per machine (the ratio depends on the CPU's bf16 support: AMX or AVX-512-bf16 only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, publish, run_rnnlm, training_time

from rnnlm_cli.config import PRESETS, TokenizeConfig
from rnnlm_cli.data import Dataset
from rnnlm_cli.jobs.tokenize import tokenize_corpus

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"


class ExampleModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel (LSTM, untied)."""

    def __init__(self, vocab: int, size: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, size)
        self.rnn = nn.LSTM(size, size, layers, dropout=dropout)
        self.decoder = nn.Linear(size, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(output)), hidden


def plain_loop(ids: np.ndarray, preset: dict, vocab: int, seconds: float) -> float:
    """Tokens per second of the example's training loop, run for about ``seconds``."""
    torch.manual_seed(0)
    batch, bptt = preset["batch_size"], preset["bptt"]
    data = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    columns = data.size(0) // batch
    data = data[: columns * batch].view(batch, -1).t().contiguous()  # (N, B), as batchify() does
    model = ExampleModel(vocab, preset["hidden_size"], preset["layers"], preset["dropout"])
    model.train()
    lr, clip = preset["lr"], preset["clip"]
    hidden = None
    tokens, start = 0, time.perf_counter()
    for i in range(0, data.size(0) - 1, bptt):
        length = min(bptt, data.size(0) - 1 - i)
        inputs, targets = data[i : i + length], data[i + 1 : i + 1 + length].reshape(-1)
        if hidden is not None:
            hidden = tuple(h.detach() for h in hidden)
        model.zero_grad()
        output, hidden = model(inputs, hidden)
        loss = F.cross_entropy(output.view(-1, vocab), targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        for parameter in model.parameters():
            parameter.data.add_(parameter.grad, alpha=-lr)
        loss.item()
        tokens += targets.numel()
        if time.perf_counter() - start >= seconds:
            break
    return tokens / (time.perf_counter() - start)


def rnnlm_run(data_dir: Path, preset: str, seconds: float, precision: str, work: Path) -> tuple[float, float]:
    """(tokens/s of the whole process, tokens/s inside the epochs) for `rnnlm train --max-time`.

    A 90 s small run spans the end of epoch 1 and a few seconds of epoch 2: the second figure is over both."""
    elapsed, stdout = run_rnnlm("train", data_dir, "--out", work / f"{preset}.pt", "--preset", preset,
                                "--max-time", seconds, "--precision", precision, "--force", "--json", "-q")
    result = json.loads(stdout)
    settings = PRESETS[preset]
    tokens = result["steps"] * settings["batch_size"] * settings["bptt"]
    trained, seconds = training_time(result["history"])
    return tokens / elapsed, trained / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ptb")
    parser.add_argument("--quick", action="store_true", help="small only, 20 s runs; print only")
    parser.add_argument("--seconds", type=float, default=None, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each kind (default 2)")
    parser.add_argument("--preset", action="append", choices=["small", "medium"],
                        help="measure only this preset (repeatable); the others' rows are kept")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rnnlm-bench-"))
    data_dir = work / "ptb"
    tokenize_corpus(TokenizeConfig(train=str(args.data / "train.txt"), valid=str(args.data / "valid.txt"),
                                   out=str(data_dir)))
    dataset = Dataset(data_dir)
    ids, vocab = dataset.ids("train"), dataset.tokenizer.vocab_size
    presets = ["small"] if args.quick else args.preset or ["small", "medium"]
    budgets = {preset: args.seconds or (20 if args.quick else {"small": 90, "medium": 180}[preset])
               for preset in presets}

    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # {machine: {preset: row}}
    rows = stored.setdefault(machine(), {})
    for preset in presets:
        budget = budgets[preset]
        plain, ours, ours_epoch, ours_fp32 = [], [], [], []
        for _ in range(args.rounds):  # alternate, so that drifts in machine speed hit both sides
            plain.append(plain_loop(ids, PRESETS[preset], vocab, budget))
            whole, epoch = rnnlm_run(data_dir, preset, budget, "auto", work)
            ours.append(whole)
            ours_epoch.append(epoch)
        ours_fp32.append(rnnlm_run(data_dir, preset, budget, "fp32", work)[0])
        rows[preset] = {"seconds": budget, "rounds": args.rounds, "plain": statistics.mean(plain),
                        "rnnlm": statistics.mean(ours),
                        "rnnlm_in_epoch": statistics.mean(ours_epoch), "rnnlm_fp32": ours_fp32[0],
                        "measured": time.strftime("%Y-%m-%d %H:%M")}
        print(preset, rows[preset], flush=True)
    if args.quick:
        return
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=2) + "\n")

    header = ["| preset | model | plain fp32 loop tok/s | rnnlm train tok/s (whole process) | ratio | "
              "rnnlm tok/s inside the epochs | rnnlm --precision fp32 (whole process) | S x R | measured |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    parts = ["## Training speed (`bench/train_speed.py`)",
             "Command: `python bench/train_speed.py`. Each rnnlm run is a whole `rnnlm train --preset NAME "
             "--max-time S` process; the plain loop runs equally long; R runs of each, alternated, averaged. The "
             "ratio compares runs made in the same script run, minutes apart, on the machine named above its table. "
             "'Inside the epochs' counts training time only (no start-up, validation or saving). Rows measured "
             "before 2026-11-24 01:30 took that figure from the run's last metrics record alone: for small, whose "
             "first PTB epoch ends inside a 90 s run, that was only the part of epoch 2 trained before the stop."]
    for name, machine_rows in stored.items():
        table = list(header)
        for preset in sorted(machine_rows, key=["small", "medium"].index):
            row = machine_rows[preset]
            settings, plain = PRESETS[preset], row["plain"]
            table.append(f"| {preset} | 2 x {settings['hidden_size']}, bptt {settings['bptt']}, batch "
                         f"{settings['batch_size']} | {plain:,.0f} | {row['rnnlm']:,.0f} | {row['rnnlm'] / plain:.2f}x "
                         f"| {row['rnnlm_in_epoch']:,.0f} | {row['rnnlm_fp32']:,.0f} "
                         f"({row['rnnlm_fp32'] / plain:.2f}x) | {row['seconds']:g} s x {row.get('rounds', 2)} | "
                         f"{row['measured']} |")
        parts += [f"Machine: {name}.", "\n".join(table)]
    body = "\n\n".join(parts)
    publish("train-speed", body, dry_run=False)


if __name__ == "__main__":
    main()
