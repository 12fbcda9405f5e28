"""The settings of the jobs that generate from a model: sample and fill."""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnlm_cli.config.choices import EVAL_PRECISIONS, check_choice, check_device, check_threads
from rnnlm_cli.errors import ConfigError


@dataclass
class SampleConfig:
    checkpoint: str
    prompts: list[str] = field(default_factory=lambda: [""])  # "" starts at the beginning of a line
    num_samples: int = 1  # per prompt
    max_tokens: int = 50  # generated tokens per sample, at most
    temperature: float = 1.0  # 0 picks the most likely token (greedy)
    top_k: int = 0  # sample among the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # sample among the fewest most likely tokens whose probabilities reach top_p (nucleus)
    greedy: bool = False  # always the most likely token: the same as temperature 0 or top_k 1
    beam_size: int = 0  # > 0: beam search returning the beam_size most probable continuations of each prompt
    seed: int | None = None  # None: a fresh one for each call, drawn by the Generator (which reports it)
    device: str = "auto"
    stop_at_eos: bool | None = None  # None: stop at the line end, except for character models
    batch_size: int = 256  # rows (samples or beams) generated together; prompts are never split across batches
    threads: int | None = None  # CPU threads; None: by the model's size and the other processes' load

    def __post_init__(self) -> None:
        check_threads(self.threads)
        check_device(self.device)
        if self.num_samples < 1 or self.max_tokens < 1 or self.batch_size < 1:
            raise ConfigError("--num-samples, --max-tokens and --batch-size must be at least 1")
        if self.temperature < 0:
            raise ConfigError(f"--temperature cannot be negative (got {self.temperature:g})")
        if self.top_k < 0:
            raise ConfigError(f"--top-k cannot be negative (got {self.top_k})")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1] (got {self.top_p:g})")
        if self.beam_size < 0:
            raise ConfigError(f"--beam-size cannot be negative (got {self.beam_size})")
        if self.beam_size:
            sampling = [name for name, given in (("--num-samples", self.num_samples != 1),
                                                 ("--temperature", self.temperature != 1.0),
                                                 ("--top-k", self.top_k != 0), ("--top-p", self.top_p != 1.0),
                                                 ("--greedy", self.greedy)) if given]
            if sampling:
                raise ConfigError(f"--beam-size returns the N most probable continuations; it does not sample, "
                                  f"so leave out {', '.join(sampling)}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0 or self.top_k == 1


@dataclass
class FillConfig:
    checkpoint: str
    sentences: list[str] = field(default_factory=list)  # each holds the blank exactly once
    candidates: list[str] | None = None  # None: rank every word of the vocabulary (word models only)
    top: int = 10  # fillers listed per sentence, best first
    blank: str = "___"
    batch_size: int = 1024  # fillers scored together
    precision: str = "fp32"  # fp32 (exact) | bf16 (faster, about 3 significant digits)
    device: str = "auto"
    threads: int | None = None  # CPU threads; None: by the model's size and the other processes' load

    def __post_init__(self) -> None:
        check_threads(self.threads)
        check_choice(self.precision, EVAL_PRECISIONS, "precision")
        check_device(self.device)
        if self.top < 1 or self.batch_size < 1:
            raise ConfigError("--top and --batch-size must be at least 1")
        if not self.blank.strip():
            raise ConfigError("--blank cannot be empty or blank space")
        if self.candidates is not None:
            self.candidates = [candidate.strip() for candidate in self.candidates if candidate.strip()]
            if not self.candidates:
                raise ConfigError("--candidates is empty; give fillers separated by commas, e.g. --candidates a,b,c")
