"""Generation speed: `rnnlm sample` single-stream and batched, and `rnnlm fill` over a whole vocabulary.

    python bench/generate_speed.py           # writes the "generate-speed" section of docs/benchmarks.md
    python bench/generate_speed.py --quick   # 2x200 only, fewer tokens; prints, writes nothing

Speed does not depend on the weights, so the models are untrained 2-layer LSTMs of the published sizes
over the PTB vocabulary (10,000 words). The baseline is the sampling loop of the PyTorch
word-language-model example (generate.py): one token per forward call, ``exp(logits / T)`` and
``torch.multinomial``, batch 1, fp32. Samples run with --no-stop-at-eos so every sample has the same length.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, publish, run_rnnlm, timed

from rnnlm_cli.checkpoint import Checkpoint, load_for_inference, save_checkpoint
from rnnlm_cli.config import FillConfig, SampleConfig, TokenizeConfig
from rnnlm_cli.data import Dataset
from rnnlm_cli.jobs.fill import BlankFiller
from rnnlm_cli.jobs.sample import Generator
from rnnlm_cli.jobs.tokenize import tokenize_corpus
from rnnlm_cli.model import ModelConfig, RNNLanguageModel

CLOZE = "the company said it expects ___ to rise sharply in the next few months"


def example_loop(model: RNNLanguageModel, tokens: int, temperature: float = 1.0) -> list[int]:
    """The PyTorch example's generate.py: one token at a time, batch 1."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.ones(1, 1, dtype=torch.long)  # <eos>: the start of a line
    hidden = None
    words = []
    with torch.no_grad():
        for _ in range(tokens):
            output, hidden = model(inputs, hidden)
            weights = output.squeeze().div(temperature).exp()
            word = torch.multinomial(weights, 1, generator=generator)[0]
            inputs.fill_(word)
            words.append(int(word))
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ptb")
    parser.add_argument("--quick", action="store_true", help="2x200 only, fewer tokens; print only")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rnnlm-bench-"))
    tokenize_corpus(TokenizeConfig(train=str(args.data / "train.txt"), out=str(work / "data")))
    tokenizer = Dataset(work / "data").tokenizer
    sizes = [200] if args.quick else [200, 650]
    length = 100 if args.quick else 300  # tokens per sample
    batches = [16] if args.quick else [16, 64, 256]

    sections = []
    for size in sizes:
        torch.manual_seed(0)
        config = ModelConfig(tokenizer.vocab_size, cell="lstm", emb_size=size, hidden_size=size, layers=2)
        checkpoint = work / f"lstm-2x{size}.pt"
        save_checkpoint(Checkpoint(config, RNNLanguageModel(config).state_dict(), tokenizer.to_dict()), checkpoint)
        model, _, _ = load_for_inference(checkpoint)

        rows = []
        seconds, _ = timed(example_loop, model, length)
        baseline = length / seconds
        rows.append(("PyTorch example loop (generate.py), 1 stream", length, seconds))
        for count in [1, *batches]:
            sample_config = SampleConfig(checkpoint=str(checkpoint), num_samples=count, max_tokens=length,
                                         stop_at_eos=False, device="cpu")
            generator = Generator(sample_config)
            seconds, samples = timed(lambda g=generator: list(g.samples([""])))
            assert all(item.tokens == length for item in samples)
            rows.append((f"`Generator.samples()`, {count} sample{'s' * (count > 1)} in one batch", count * length,
                         seconds))
        for count in (1, batches[-1]):
            seconds, _ = run_rnnlm("sample", checkpoint, "-n", count, "--max-tokens", length, "--no-stop-at-eos",
                                   "--device", "cpu")
            rows.append((f"`rnnlm sample -n {count}` (whole process)", count * length, seconds))

        table = [f"**2 x {size} LSTM**, {tokenizer.vocab_size:,}-word vocabulary, {length} tokens per sample",
                 "", "| run | tokens | seconds | tokens/s | vs example loop |", "|---|---:|---:|---:|---:|"]
        for name, count, seconds in rows:
            table.append(f"| {name} | {count:,} | {seconds:.2f} | {count / seconds:,.0f} | "
                         f"{count / seconds / baseline:.1f}x |")

        fill_rows = []
        for precision in ("fp32", "bf16"):
            filler = BlankFiller(FillConfig(checkpoint=str(checkpoint), precision=precision, device="cpu"))
            seconds, results = timed(lambda f=filler: list(f.fill([CLOZE])))
            fill_rows.append(f"| `BlankFiller.fill()` --precision {precision} | {results[0].scored:,} | "
                             f"{seconds:.2f} |")
        seconds, _ = run_rnnlm("fill", checkpoint, CLOZE, "--device", "cpu", "--json")
        fill_rows.append(f"| `rnnlm fill` fp32 (whole process) | {results[0].scored:,} | {seconds:.2f} |")
        table += ["", f"`fill` ranking every word for \"{CLOZE}\":", "",
                  "| run | fillers scored | seconds |", "|---|---:|---:|", *fill_rows]
        sections.append("\n".join(table))
        print("\n".join(table), "\n", flush=True)

    body = "\n\n".join([
        "## Generation speed (`bench/generate_speed.py`)",
        f"Machine: {machine()}. Command: `python bench/generate_speed.py`.",
        *sections,
        "All samples of a call advance together, one model call per token for the whole batch, so the "
        "per-call overhead of a small recurrent step is shared; a single stream is bound by that overhead. "
        "Whole-process times include about 3 s of Python and torch start-up and loading the checkpoint.",
    ])
    publish("generate-speed", body, dry_run=args.quick)


if __name__ == "__main__":
    main()
