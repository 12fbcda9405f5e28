from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import (
    THREADS_DEFAULT,
    Cell,
    Device,
    JsonOpt,
    Optimizer,
    QuietOpt,
)
from rnnlm_cli.config import (
    PRESET_SOURCES,
    PRESETS,
    Direction,
    Schedule,
    Softmax,
    TrainConfig,
    parse_cutoffs,
)
from rnnlm_cli.config import (
    TrainPrecision as Precision,
)
from rnnlm_cli.distributed import is_main_process
from rnnlm_cli.errors import ConfigError

NAME = "train"
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
# the settings taken from options of the same name; the others are arguments, or not options at all
_OPTIONS = [name for name in _DEFAULTS if name not in ("dataset", "out", "preset", "force", "valid_fraction")]
Preset = Literal[tuple(PRESETS)]  # the presets' names, as a choice
_PRESET_HELP = "; ".join(f"{name}: {source}" for name, source in PRESET_SOURCES.items())


def _option(name: str, help: str, *flags: str, default: Any = None, **kwargs: Any) -> Any:
    """An option that is None when not given (presets and --resume need to know); its help shows the default."""
    shown = _DEFAULTS[name] if default is None else default
    return typer.Option(*flags, help=f"{help} [default: {shown}]", show_default=False, **kwargs)


def command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(metavar="DIR", help="Dataset directory written by `rnnlm tokenize`.",
                                           show_default=False)],
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="CKPT", show_default=False,
        help="Checkpoint to write; it always holds the best-validation model. The latest state, for --resume, "
             "goes beside it as NAME.last.pt, and one JSON line per validation to NAME.metrics.jsonl. "
             "Required unless --resume is given.")] = None,
    resume: Annotated[str | None, typer.Option(
        metavar="CKPT", show_default=False,
        help="Continue the run whose checkpoint is CKPT from its latest state (same dataset). "
             "Options given now override the run's, except the model's shape and the optimizer.")] = None,
    preset: Annotated[Preset | None, typer.Option(
        metavar="NAME", show_default=False,
        help=f"Start from a recipe (published ones, and rnnlm's faster small-fast and medium-fast); explicit options "
             f"override it. {_PRESET_HELP}.")] = None,
    cell: Annotated[Cell | None, _option("cell", "Recurrent cell.")] = None,
    layers: Annotated[int | None, _option("layers", "Recurrent layers.", min=1)] = None,
    emb_size: Annotated[int | None, _option("emb_size", "Embedding size.", min=1)] = None,
    hidden_size: Annotated[int | None, _option("hidden_size", "Hidden units per layer.", min=1)] = None,
    dropout: Annotated[float | None, _option(
        "dropout", "Dropout on embeddings, between layers and on outputs.", min=0.0, max=0.99)] = None,
    dropout_input: Annotated[float | None, _option(
        "dropout_input", "Dropout on the embeddings only.", default="--dropout", min=0.0, max=0.99)] = None,
    dropout_hidden: Annotated[float | None, _option(
        "dropout_hidden", "Dropout between recurrent layers only.", default="--dropout", min=0.0, max=0.99)] = None,
    dropout_output: Annotated[float | None, _option(
        "dropout_output", "Dropout on the top layer's output only.", default="--dropout", min=0.0, max=0.99)] = None,
    variational: Annotated[bool | None, _option(
        "variational", "Variational (locked) dropout: one mask per sequence, shared across time steps.",
        "--variational/--no-variational", default="no")] = None,
    word_dropout: Annotated[float | None, _option(
        "word_dropout", "Drop whole words: each batch zeroes this share of the embedding matrix's rows.",
        min=0.0, max=0.99)] = None,
    tie_weights: Annotated[bool | None, _option(
        "tie_weights", "Share the input embedding and output matrices (needs --emb-size = --hidden-size).",
        "--tie-weights/--no-tie-weights", default="no")] = None,
    init_range: Annotated[float | None, _option(
        "init_range", "Draw the embedding and output weights uniformly from [-R, R].", metavar="R",
        min=0.0)] = None,
    init_recurrent: Annotated[bool | None, _option(
        "init_recurrent", "Draw the recurrent layers' weights and biases from [-R, R] too, as Zaremba et al. do; "
                          "off, they keep PyTorch's [-1/sqrt(hidden), 1/sqrt(hidden)].",
        "--init-recurrent/--no-init-recurrent", default="no")] = None,
    forget_bias: Annotated[float | None, _option(
        "forget_bias", "LSTM: start every forget gate's bias at X (1 is Jozefowicz et al.'s and TensorFlow's "
                       "choice), so that the cells keep what they hold from the start: at PyTorch's random bias, "
                       "near 0, half of a cell's content is lost at every step.", metavar="X",
        default="PyTorch's random one")] = None,
    softmax: Annotated[Softmax | None, _option(
        "softmax", "Output layer. full: one softmax over the vocabulary; adaptive: frequent words in a small head, "
                   "rarer ones in clusters behind smaller projections (much faster for big vocabularies).")] = None,
    cutoffs: Annotated[str | None, _option(
        "cutoffs", "Adaptive softmax: where the frequency-ordered vocabulary is cut into head and clusters, e.g. "
                   "2000,10000.", default="2000,10000,50000,200000 below the vocabulary size",
        metavar="N,N,...")] = None,
    direction: Annotated[Direction | None, _option(
        "direction", "forward: left to right; backward: right to left; both: an ELMo-style biLM, a forward and a "
                     "backward stack sharing the embedding and the softmax, trained together (eval reports both "
                     "directions, fill combines them, sample uses the forward one).")] = None,
    bptt: Annotated[int | None, _option("bptt", "Time steps per truncated back-propagation window.", min=1)] = None,
    batch_size: Annotated[int | None, _option("batch_size", "Parallel streams per batch.", min=1)] = None,
    optimizer: Annotated[Optimizer | None, _option("optimizer", "Optimizer.")] = None,
    lr: Annotated[float | None, _option("lr", "Learning rate.", default="20 for sgd, 0.001 for adam")] = None,
    weight_decay: Annotated[float | None, _option(
        "weight_decay", "L2 penalty (sgd, adam) or decoupled weight decay (adamw).", min=0.0)] = None,
    clip: Annotated[float | None, _option("clip", "Clip the global gradient norm to this; 0 turns it off.",
                                             min=0.0)] = None,
    epochs: Annotated[int | None, _option("epochs", "Epochs to train (in total, when resuming).", min=1)] = None,
    schedule: Annotated[Schedule | None, _option(
        "schedule", "Learning-rate schedule. plateau: divide by --lr-decay after an epoch without improvement; "
                    "epoch: divide by --lr-decay every epoch after --decay-start; cosine: --warmup-steps of "
                    "linear warm-up, then a cosine to 0 (good with adam).")] = None,
    lr_decay: Annotated[float | None, _option(
        "lr_decay", "Divisor of the plateau and epoch schedules; 1 keeps the rate.", min=1.0)] = None,
    decay_start: Annotated[int | None, _option(
        "decay_start", "Epoch schedule: epochs at the full rate before decaying.", min=0)] = None,
    warmup_steps: Annotated[int | None, _option("warmup_steps", "Cosine schedule: warm-up steps.", min=0)] = None,
    patience: Annotated[int | None, _option(
        "patience", "Stop after this many epochs without a better validation loss; 0 never stops early.",
        min=0)] = None,
    precision: Annotated[Precision | None, _option(
        "precision", "auto: bf16 autocast on CUDA and on CPUs with AMX or AVX-512 BF16, else fp32. Weights "
                     "and the loss stay fp32 either way.")] = None,
    seed: Annotated[int | None, _option("seed", "Random seed; the same seed on CPU gives the same model.")] = None,
    device: Annotated[Device | None, _option(
        "device", "Where to train: auto picks CUDA, then Apple MPS, then the CPU. Under torchrun each process "
                  "takes the GPU of its LOCAL_RANK.")] = None,
    max_time: Annotated[float | None, _option(
        "max_time", "Time budget in seconds for the whole command, start-up and the final validation and saves "
                    "included: training stops that much earlier (as long as the last validation took, estimated "
                    "before the first). Both checkpoints are saved; continue with --resume. At least one step is "
                    "trained: a budget shorter than a step and a validation is overrun, with a warning.",
        default="no limit", min=0.001)] = None,
    save_every: Annotated[str | None, _option(
        "save_every", "Also save the resumable state (the .last checkpoint) every N steps (500) or minutes "
                      "(10m), bounding what a crash can cost. Ctrl-C and SIGTERM always save it.",
        default="every epoch", metavar="N|Nm")] = None,
    valid_every: Annotated[int | None, _option(
        "valid_every", "Also validate after steps N, 2N, ... of each epoch, for long epochs or to keep the best "
                       "model between epoch ends. Each validation is recorded and can become the best checkpoint; "
                       "the schedule and --patience look at epoch ends only. 0: at epoch ends only.",
        metavar="N", min=0)] = None,
    log_gradients: Annotated[bool | None, _option(
        "log_gradients", "Record every step's global gradient norm (and so the clip rate), and at each validation "
                         "how the loss gradient reaches back through the hidden states of a validation window; "
                         "`rnnlm info` charts both.", "--log-gradients/--no-log-gradients", default="no")] = None,
    threads: Annotated[int | None, _option(
        "threads", "CPU threads for the matrix work; a resumed run chooses afresh unless given.", metavar="N",
        default=THREADS_DEFAULT, min=1)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Let a new run replace an existing checkpoint at --out (and its .last state).")] = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train an RNN language model on a dataset directory.

    Embedding -> RNN / LSTM / GRU layers -> Affine -> Softmax, trained with truncated BPTT and
    gradient clipping. Validates after every epoch (and every --valid-every steps) on the valid
    split (or on a held-out tail of train), follows a learning-rate schedule and stops early
    after --patience bad epochs. A progress bar shows loss, ppl and tokens/s; one line per
    validation follows. With --preset, the preset's values replace the defaults shown here;
    explicit options still win.

    Examples:

    \b
      rnnlm train data/ptb --out small.pt --preset small
      rnnlm train data/ptb --out fast.pt --preset small-fast  # 4 epochs, tied
      rnnlm train data/ptb --out medium.pt --preset medium-fast  # 18 epochs
      rnnlm train data/ptb --out ptb.pt --cell gru --hidden-size 400 \\
          --optimizer adam --schedule cosine
      rnnlm train data/ptb --resume small.pt --epochs 20
      rnnlm train data/wt103 --out wt103.pt --valid-every 5000 --save-every 30m
      rnnlm train data/wt2 --out wt2.pt --softmax adaptive --cutoffs 2000,10000

    Data-parallel on 2 processes of one machine (gloo on CPUs, NCCL on GPUs; --batch-size is the
    global batch, split evenly among the processes):

    \b
      torchrun --standalone --nproc-per-node 2 -m rnnlm_cli \\
          train data/ptb --out ptb.pt --preset small
    """
    from rnnlm_cli.jobs.train import plan_resume, train

    main_process = is_main_process()  # under torchrun only rank 0 reports
    output.setup_logging(quiet or not main_process)
    # every setting of TrainConfig is an option of this command, under its own name (None when not given)
    overrides = {name: ctx.params[name] for name in _OPTIONS if ctx.params[name] is not None}
    if "cutoffs" in overrides:
        overrides["cutoffs"] = parse_cutoffs(overrides["cutoffs"])
    plan = None
    if resume is not None:
        config, plan = plan_resume(resume, dataset, overrides, out=out, preset=preset, force=force)
    elif out is None:
        raise ConfigError("--out is required (or --resume CKPT to continue a run)")
    else:
        config = TrainConfig.from_preset(preset, dataset=dataset, out=out, force=force,
                                         **overrides)
    result = train(config, resume=plan, progress=not quiet, started=(ctx.obj or {}).get("started"))
    if not main_process:
        return
    if json_output:
        output.print_json(result.to_dict())
    elif not quiet:
        console = output.stderr()
        console.print(f"best valid ppl {output.number(result.best_valid_ppl)} (epoch {result.best_epoch}) -> "
                      f"{result.checkpoint}")
        console.print(f"latest state -> {result.last_checkpoint}; metrics -> {result.metrics}")
