"""The main job on the bundled demo corpus: tokenize -> train -> eval -> sample, in 15-25 seconds on 2 CPU cores."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnlm_cli.config import EvalConfig, SampleConfig, TokenizeConfig, TrainConfig
from rnnlm_cli.errors import DatasetError
from rnnlm_cli.jobs.evaluate import EvalResult, evaluate
from rnnlm_cli.jobs.sample import SampleResult, sample
from rnnlm_cli.jobs.tokenize import DatasetSummary, tokenize_corpus
from rnnlm_cli.jobs.train import TrainResult, train

log = logging.getLogger(__name__)

DEMO_PROMPTS = ["Tom", "On Sunday ,", "太郎は", "日曜日に"]


def demo_corpus() -> Path:
    """The demo corpus: inside the installed package, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent  # rnnlm_cli
    for candidate in (package / "demo_corpus", package.parent / "corpora" / "demo"):
        if (candidate / "train.txt").exists():
            return candidate
    raise DatasetError("the bundled demo corpus is missing from this installation")


@dataclass
class DemoResult:
    dataset: DatasetSummary
    training: TrainResult
    evaluation: EvalResult
    samples: SampleResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset.to_dict(),
            "training": self.training.to_dict(),
            "evaluation": self.evaluation.to_dict(),
            "samples": [item.to_dict() for item in self.samples.samples],
        }


# Called after each step with its name ("tokenize", "train", "eval", "sample") and its result, so that a caller
# can show each result as soon as it is there.
StepCallback = Callable[[str, Any], None]
# how the demo samples: the same samples on every run
DEMO_SAMPLING = {"num_samples": 2, "temperature": 0.8, "seed": 0}


def run_demo(out_dir: str = "checkpoints", device: str = "auto", progress: bool = True,
             threads: int | None = None, on_step: StepCallback | None = None) -> DemoResult:
    """Tokenize the demo corpus with a unigram sentencepiece model, train a small LSTM for five epochs (10-20
    seconds on 2 CPU cores), evaluate it on the test text and sample from it."""
    corpus = demo_corpus()
    out = Path(out_dir)
    data_dir, checkpoint = out / "demo-data", out / "demo.pt"
    report = on_step or (lambda step, result: None)
    log.info("1/4 tokenize %s -> %s", corpus, data_dir)
    dataset = tokenize_corpus(TokenizeConfig(
        train=str(corpus / "train.txt"), valid=str(corpus / "valid.txt"), test=str(corpus / "test.txt"),
        kind="unigram", vocab_size=600, out=str(data_dir), force=True,  # each demo run starts afresh
    ))
    report("tokenize", dataset)
    log.info("2/4 train a 1 x 256 LSTM for 5 epochs -> %s", checkpoint)
    training = train(TrainConfig(
        dataset=str(data_dir), out=str(checkpoint), cell="lstm", layers=1, emb_size=128, hidden_size=256,
        dropout=0.1, optimizer="adam", lr=3e-3, batch_size=32, bptt=35, epochs=5, device=device, threads=threads,
        force=True,  # the demo's own checkpoint, rebuilt on every run
    ), progress=progress)
    report("train", training)
    log.info("3/4 evaluate on %s", corpus / "test.txt")
    evaluation = evaluate(EvalConfig(checkpoint=str(checkpoint), inputs=[str(corpus / "test.txt")], device=device,
                                     threads=threads))
    report("eval", evaluation)
    log.info("4/4 sample")
    samples = sample(SampleConfig(checkpoint=str(checkpoint), prompts=DEMO_PROMPTS, device=device, threads=threads,
                                  **DEMO_SAMPLING))
    report("sample", samples)
    return DemoResult(dataset, training, evaluation, samples)
