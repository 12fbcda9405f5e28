"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

# the choices, for the commands (each is a Literal, which Typer offers as it is)
from rnnlm_cli.config import Cell as Cell
from rnnlm_cli.config import Context as Context
from rnnlm_cli.config import Device as Device
from rnnlm_cli.config import EncodingErrors as EncodingErrors
from rnnlm_cli.config import EvalPrecision as Precision
from rnnlm_cli.config import Optimizer as Optimizer
from rnnlm_cli.tokenizers import Kind as Kind

Format = Literal["table", "tsv", "json"]

CheckpointArg = Annotated[
    str, typer.Argument(metavar="CKPT", help="Checkpoint file written by `rnnlm train`.", show_default=False)
]
DeviceOpt = Annotated[Device, typer.Option(
    help="Where to run: auto picks CUDA, then Apple MPS, then the CPU (CUDA_VISIBLE_DEVICES picks the GPU). "
         "A checkpoint runs on any device, whatever it was trained on.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of a table.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or log lines on stderr; errors still show.")
]
THREADS_DEFAULT = ("OMP_NUM_THREADS if set; else 1 for tiny models, and for others every core while no other "
                   "process keeps one busy, one fewer per busy core")
ThreadsOpt = Annotated[int | None, typer.Option(
    min=1, show_default=False, help=f"CPU threads for the matrix work. [default: {THREADS_DEFAULT}]")]
PrecisionOpt = Annotated[Precision, typer.Option(
    help="fp32 gives exact scores; bf16 runs matrix products in bfloat16 (faster on CPUs with AVX-512 BF16 or "
         "AMX, and on GPUs) and agrees to about 3 significant digits.")]
EncodingErrorsOpt = Annotated[EncodingErrors, typer.Option(
    help="strict: invalid UTF-8 stops with an error naming the file and line; replace: such bytes become U+FFFD "
         "and the work carries on.")]
