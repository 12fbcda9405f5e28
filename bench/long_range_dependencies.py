"""Long-range dependencies: Elman RNN, LSTM and GRU at equal parameter counts against the exact optimum.

    python bench/long_range_dependencies.py                  # distances 5, 20, 50; writes the "long-range" section
    python bench/long_range_dependencies.py --seconds 20 -n  # a quick look; prints, writes nothing

For each distance, corpora/long_range.py writes 5,000 training stories in which the last name repeats the
first one DISTANCE tokens back (see its docstring: every token's true probability is known, so the best
possible test perplexity is exact). Each cell is trained as one `rnnlm train` process for the same
wall-clock budget (1 layer, embedding 32, hidden size chosen so every cell has about the parameters of a
64-unit LSTM, no dropout, Adam at lr 0.003, bptt 64 so that one window spans every distance). Reported:
test perplexity (`rnnlm eval`, stream context) against the optimum, and accuracy on the dependent word
(the model's most likely next token at that position is the first name), where chance is 1 / 15.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "corpora"))
import long_range
from common import machine, publish, run_rnnlm

from rnnlm_cli.checkpoint import load_for_inference

DISTANCES = (5, 20, 50)
CELLS = ("rnn_tanh", "gru", "lstm")
GATES = {"rnn_tanh": 1, "gru": 3, "lstm": 4}
EMB = 32
REFERENCE_HIDDEN = 64  # of the LSTM


def parameters(cell: str, hidden: int, vocab: int) -> int:
    gates = GATES[cell]
    return vocab * EMB + gates * hidden * (EMB + hidden) + 2 * gates * hidden + hidden * vocab + vocab


def matched_hidden(cell: str, vocab: int) -> int:
    """The hidden size whose model has the parameter count closest to the reference LSTM's."""
    target = parameters("lstm", REFERENCE_HIDDEN, vocab)
    return min(range(8, 512), key=lambda hidden: abs(parameters(cell, hidden, vocab) - target))


def dependent_accuracy(checkpoint: Path, test: Path) -> float:
    """Share of test lines whose most likely token at the dependent position is the line's first name."""
    model, tokenizer, _ = load_for_inference(checkpoint)
    lines = [line.split() for line in test.read_text(encoding="utf-8").splitlines()]
    ids = torch.tensor([tokenizer.encode(" ".join(words)).ids for words in lines])  # every line has one length
    inputs = torch.cat([torch.full((len(lines), 1), tokenizer.eos_id), ids[:, :-1]], dim=1)
    position = long_range.dependent_position(lines[0])
    with torch.inference_mode():
        features, _ = model.features(inputs)
        guess = model.logits(features[:, position]).argmax(dim=-1)
    return float((guess == ids[:, position]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget of each model")
    parser.add_argument("-n", "--dry-run", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rnnlm-long-range-"))
    rows = []
    for distance in DISTANCES:
        text = work / f"text-{distance}"
        optimum = long_range.write_corpus(text, distance, {"train": 5000, "valid": 500, "test": 500},
                                          seed=distance)["test"]["ppl"]
        data = work / f"data-{distance}"
        run_rnnlm("tokenize", text / "train.txt", "--valid", text / "valid.txt", "--out", data, "-q")
        vocab = json.loads((data / "meta.json").read_text())["tokenizer"]["vocab_size"]
        for cell in CELLS:
            hidden = matched_hidden(cell, vocab)
            checkpoint = work / f"{cell}-{distance}.pt"
            _, stdout = run_rnnlm("train", data, "--out", checkpoint, "--cell", cell, "--layers", "1", "--emb-size",
                                  EMB, "--hidden-size", hidden, "--dropout", "0", "--optimizer", "adam", "--lr",
                                  "0.003", "--bptt", "64", "--epochs", "1000", "--patience", "0", "--max-time",
                                  args.seconds, "--seed", "1", "--json", "-q")
            trained = json.loads(stdout)
            _, stdout = run_rnnlm("eval", checkpoint, text / "test.txt", "--json", "-q")
            ppl = json.loads(stdout)["total"]["ppl"]
            rows.append({"distance": distance, "cell": cell, "hidden": hidden,
                         "parameters": parameters(cell, hidden, vocab), "epochs": trained["epochs"],
                         "ppl": ppl, "optimum": optimum, "accuracy": dependent_accuracy(checkpoint, text / "test.txt")})
            print(rows[-1], file=sys.stderr, flush=True)
    table = ["| distance | cell | hidden | parameters | epochs | test ppl | optimum | ppl / optimum | "
             "dependent word accuracy |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        table.append(f"| {row['distance']} | {row['cell']} | {row['hidden']} | {row['parameters']:,} | "
                     f"{row['epochs']} | {row['ppl']:.3f} | {row['optimum']:.3f} | {row['ppl'] / row['optimum']:.3f} | "
                     f"{100 * row['accuracy']:.1f}% |")
    body = f"""## Long-range dependencies (`bench/long_range_dependencies.py`)

Machine: {machine()}. Command: `python bench/long_range_dependencies.py --seconds {args.seconds:g}`. Corpus:
`corpora/long_range.py` (a name, DISTANCE − 5 random filler words, another name, "said hi to", the first
name again); the optimum is the exact test perplexity of the process that wrote the text. Each model: one
`rnnlm train` process of {args.seconds:g} s, 1 layer, about the parameters of a 64-unit LSTM, bptt 64.
Accuracy: the model's most likely word at the dependent position is the right name (chance: 1 / 15 = 6.7%).

{chr(10).join(table)}
"""
    publish("long-range", body, args.dry_run)


if __name__ == "__main__":
    main()
