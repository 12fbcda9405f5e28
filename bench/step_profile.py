"""Where one training step of a preset's shape spends its time: milliseconds per step and the top operators.

    python bench/step_profile.py --preset small           # 2x200, bptt 20, batch 20, bf16 on CPUs that have it
    python bench/step_profile.py --preset medium --steps 10
    python bench/step_profile.py --preset small --precision fp32
    python bench/step_profile.py --preset small --loop 60  # also the trainer's own loop on PTB, 60 s
    python bench/step_profile.py --preset medium --plain 45  # also the plain fp32 loop of train_speed.py, 45 s

Runs one step of `rnnlm train` through the trainer's own parts (``rnnlm_cli/jobs/train/step.py``: the model's
training forward pass and fused loss under the training precision, backward with a sparse embedding gradient,
the global gradient norm and clipping, the plain SGD step of `rnnlm_cli/model/sgd.py`) on random token ids over the
PTB vocabulary size (10,000): speed does not depend on the data. Prints the mean step time over
``--steps`` timed steps, then a torch.profiler table of the same number of steps (the profiler adds
overhead, so its total is a little higher). Writes nothing; docs/benchmarks-history.md's profiling notes quote it.

With ``--loop S`` it also trains the preset on PTB for S seconds through ``rnnlm_cli.jobs.train.train`` (the
loop `rnnlm train` runs, with its data batches, progress bookkeeping and checks) between two timings of the
bare step, and prints the loop's tokens/s inside the epoch beside the bare step's: what the loop adds.
With ``--plain S`` it times the plain PyTorch fp32 loop of bench/train_speed.py on PTB for S seconds between
two timings of the bare step, and prints the bare step's speed as a multiple of it: the most that
`rnnlm train` could reach against that loop with no start-up, data loading, validation or saving.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, tokenized
from train_speed import plain_loop

from rnnlm_cli import distributed
from rnnlm_cli.config import PRESETS, TrainConfig
from rnnlm_cli.data import Dataset
from rnnlm_cli.jobs.train import train
from rnnlm_cli.jobs.train.step import LossStep, Optimization
from rnnlm_cli.model import ModelConfig, RNNLanguageModel, detach_hidden
from rnnlm_cli.runtime import autocast, keep_freed_memory, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=50, help="steps timed, and steps profiled")
    parser.add_argument("--rows", type=int, default=25, help="operators shown")
    parser.add_argument("--dense-embedding-gradient", action="store_true",
                        help="the dense embedding gradient rnnlm train uses for other optimizers")
    parser.add_argument("--loop", type=float, default=None, metavar="S",
                        help="also train the preset on PTB for S seconds with rnnlm's trainer, between two timings "
                             "of the bare step")
    parser.add_argument("--plain", type=float, default=None, metavar="S",
                        help="also time bench/train_speed.py's plain fp32 loop on PTB for S seconds, between two "
                             "timings of the bare step")
    args = parser.parse_args()

    keep_freed_memory()
    torch.manual_seed(0)
    preset = PRESETS[args.preset]
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    # the trainer's own step parts for the preset: its forward pass and loss, optimizer, clipping and schedule rate
    train_config = TrainConfig(dataset="", out="", **preset, precision=args.precision)
    config = ModelConfig(10_000, **train_config.architecture())
    model = RNNLanguageModel(config).train()
    optimization = Optimization(train_config, model, distributed.world_from_env(), device)
    if args.dense_embedding_gradient:
        model.sparse_embedding_gradient = False
    loss_step = LossStep(model, config.readings())
    batch, bptt = preset["batch_size"], preset["bptt"]
    inputs, targets = torch.randint(0, 10_000, (batch, bptt)), torch.randint(0, 10_000, (batch, bptt))
    hidden = model.init_hidden(batch)

    def step() -> None:
        """One step as rnnlm train takes it (rnnlm_cli/jobs/train/loop.py), without its data and bookkeeping."""
        nonlocal hidden
        with autocast(device, precision):
            loss, (new_hidden,) = loss_step([[inputs, targets]], [detach_hidden(hidden)])
        optimization.optimizer.zero_grad()
        loss.backward()
        _, scale = optimization.clip()
        loss.item()
        optimization.apply(train_config.lr, scale)
        hidden = new_hidden

    def timed_steps() -> float:
        """Tokens per second of the bare step (printed)."""
        for _ in range(5):
            step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = (time.perf_counter() - start) / args.steps
        print(f"preset {args.preset} ({config.layers} x {config.hidden_size} {config.cell}, batch {batch}, "
              f"bptt {bptt}), {precision}, {torch.get_num_threads()} threads: {seconds * 1e3:.1f} ms per bare step, "
              f"{batch * bptt / seconds:,.0f} tokens/s", flush=True)
        return batch * bptt / seconds

    before = timed_steps()
    if args.plain:
        dataset = Dataset(tokenized(SHARED_DATA / "ptb", "ptb-data"))
        # in a fresh process, as bench/train_speed.py runs it: without the allocator setting made above
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            plain = pool.apply(plain_loop, (np.asarray(dataset.ids("train")), preset, dataset.tokenizer.vocab_size,
                                            args.plain))
        print(f"plain fp32 loop of bench/train_speed.py on PTB, {args.plain:g} s: {plain:,.0f} tokens/s "
              f"({batch * bptt / plain * 1e3:.1f} ms per step)", flush=True)
        after = timed_steps()
        print(f"bare step against the plain loop: {before / plain:.2f}x before it, {after / plain:.2f}x after it",
              flush=True)
    if args.loop:
        data = tokenized(SHARED_DATA / "ptb", "ptb-data")
        with tempfile.TemporaryDirectory() as scratch:
            result = train(TrainConfig(dataset=str(data), out=str(Path(scratch) / "loop.pt"), **preset,
                                       preset=args.preset, precision=args.precision, max_time=args.loop),
                           progress=False)
        record = result.history[-1]
        print(f"rnnlm's training loop on PTB, {record['seconds']:.0f} s: {record['tokens_per_second']:,.0f} tokens/s "
              f"inside the epoch ({batch * bptt / record['tokens_per_second'] * 1e3:.1f} ms per step)", flush=True)
        timed_steps()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(args.steps):
            step()
    print(f"torch.profiler over {args.steps} steps (self time; divide by {args.steps} for one step):")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
