from __future__ import annotations

import json
import math
import sys
from typing import Annotated, Literal

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import (
    CheckpointArg,
    Context,
    DeviceOpt,
    EncodingErrorsOpt,
    Format,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
)
from rnnlm_cli.config import (
    DYNAMIC_LR,
    CacheSettings,
    DynamicRule,
    DynamicSettings,
    NgramSettings,
)

NAME = "eval"

Level = Literal["summary", "line", "token"]
_CACHE, _DYNAMIC, _NGRAM = CacheSettings(), DynamicSettings(), NgramSettings("")

SUMMARY_COLUMNS = ("file", "lines", "tokens", "oov", "nll", "ppl", "ppl1", "words", "word_ppl", "bytes",
                   "bits_per_byte")
LINE_COLUMNS = ("file", "line", "tokens", "oov", "log10_prob", "ppl")
TOKEN_COLUMNS = ("file", "line", "position", "token", "oov", "log10_prob")


def command(
    checkpoint: CheckpointArg,
    files: Annotated[list[str] | None, typer.Argument(
        metavar="FILE", show_default=False,
        help="Text files to score, one sentence per line; - reads stdin.")] = None,
    files_from: Annotated[str | None, typer.Option(
        metavar="LIST", show_default=False,
        help="Also score the files listed in LIST, one path per line (- reads the list from stdin).")] = None,
    level: Annotated[Level, typer.Option(
        help="summary: one row per file and a total; line: one row per input line, in input order; "
             "token: one row per token with its log10 probability. line and token stream as they go.")
    ] = "summary",
    output_format: Annotated[Format | None, typer.Option(
        "--format", show_default=False,
        help="table (summary only), tsv (with a header) or json (one document for summary, JSON Lines "
             "for line and token). [default: table for summary, tsv for line and token]")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    context: Annotated[Context, typer.Option(
        help="stream: carry the hidden state across lines (how the model was trained, and how published "
             "PTB / WikiText numbers are measured); line: start each line afresh, like SRILM and KenLM, "
             "so a line's score does not depend on its neighbours.")
    ] = "stream",
    exclude_oov: Annotated[bool, typer.Option(
        "--exclude-oov", help="SRILM's convention: out-of-vocabulary tokens are neither scored nor counted. "
                              "By default they are scored as `<unk>` and counted.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Lines per forward pass with --context line; it changes "
                                                        "only fp32 rounding (totals agree to about 1e-9).")] = 64,
    cache: Annotated[bool, typer.Option(
        "--cache", help="Mix in a continuous cache (Grave et al. 2017): the tokens that followed the recent states "
                        "most like the current one get more probability. Pick its settings with `rnnlm tune`.")
    ] = False,
    cache_window: Annotated[int | None, typer.Option(
        min=1, show_default=False,
        help=f"Positions the cache looks back over. [default: {_CACHE.window}, awd-lstm-lm's for PTB]")] = None,
    cache_theta: Annotated[float | None, typer.Option(
        min=0, show_default=False,
        help=f"Sharpness of the cache's attention over those positions. [default: {_CACHE.theta}, tuned on PTB "
             f"valid for the small preset]")] = None,
    cache_lambda: Annotated[float | None, typer.Option(
        min=0, max=1, show_default=False,
        help=f"The cache's share of the probability. [default: {_CACHE.lam}, tuned likewise]")] = None,
    dynamic: Annotated[bool, typer.Option(
        "--dynamic", help="Dynamic evaluation: score each segment of text, then take one gradient step on it, so "
                          "the model adapts to the text as it reads (the checkpoint file is not changed). Runs in "
                          "fp32 whatever --precision says: its small steps vanish in bf16.")] = False,
    dynamic_rule: Annotated[DynamicRule | None, typer.Option(
        show_default=False,
        help="rms: Krause et al. 2018, steps scaled per weight by its gradient RMS on the training text and pulled "
             "back toward the trained weights (the default: it gained most in their tests and in ours); sgd: plain "
             "steps, as in Mikolov's rnnlm, needing no training text. [default: rms]")] = None,
    dynamic_lr: Annotated[float | None, typer.Option(
        min=0, show_default=False,
        help=f"Step size. [default: {DYNAMIC_LR['rms']:g} for rms, {DYNAMIC_LR['sgd']:g} for sgd: tuned on PTB "
             f"valid for the small preset]")] = None,
    dynamic_decay: Annotated[float | None, typer.Option(
        min=0, max=1, show_default=False,
        help=f"Pull toward the trained weights at each step. [default: {_DYNAMIC.decay}, tuned likewise]")] = None,
    dynamic_segment: Annotated[int | None, typer.Option(
        min=1, show_default=False,
        help=f"Tokens scored before each step (with --context line: each line is a segment). Shorter adapts "
             f"sooner and costs more. [default: {_DYNAMIC.segment}]")] = None,
    dynamic_data: Annotated[str | None, typer.Option(
        metavar="DIR", show_default=False,
        help="The dataset directory the model was trained on (rnnlm tokenize's), for rms's gradient statistics "
             "from its training split. [default: the one the checkpoint records]")] = None,
    ngram: Annotated[str | None, typer.Option(
        metavar="MODEL", show_default=False,
        help="Interpolate each token's probability with an n-gram model (ARPA or KenLM binary, read with the "
             "kenlm module: pip install 'rnnlm-cli[ngram]'); word-level models only. Words outside the model's "
             "vocabulary are scored by it as <unk> and by the n-gram as themselves.")] = None,
    ngram_weight: Annotated[float | None, typer.Option(
        min=0, max=1, show_default=False,
        help=f"The n-gram's share: p = (1 - W) p_rnn + W p_ngram. [default: {_NGRAM.weight}, tuned on PTB valid "
             f"for the small preset with a Kneser-Ney 5-gram]")] = None,
    precision: PrecisionOpt = "fp32",
    encoding_errors: EncodingErrorsOpt = "strict",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Perplexity of a model on text files: per file, line or token.

    Scores one or more files (or stdin), per file and in total, or per line or token.
    Every token is scored, the end-of-sentence token at each line end included (ppl); ppl1
    divides the same total by the tokens other than the ends of sentence, as SRILM does.
    Words outside the vocabulary are scored as `<unk>` and counted
    (OOV), unless --exclude-oov. word ppl and bits/byte compare models with different tokenizers
    on the same text. stdout carries only results.

    --cache, --dynamic and --ngram adapt and combine the scores, alone or together (the
    n-gram mixed last); a token's score still depends only on the text before it, in its
    file. Choose their settings on validation text with `rnnlm tune`, never on test text.

    Examples:

    \b
      rnnlm eval ptb.pt ptb/valid.txt ptb/test.txt
      cat notes.txt | rnnlm eval ptb.pt - --json
      rnnlm eval ptb.pt test.txt --level line --context line | head
      rnnlm eval ptb.pt test.txt --cache --dynamic --ngram kn5.arpa
    """
    from rnnlm_cli.config import EvalConfig
    from rnnlm_cli.errors import ConfigError

    output.setup_logging(quiet)
    chosen = "json" if json_output else output_format
    if chosen is None:
        chosen = "table" if level == "summary" else "tsv"
    if chosen == "table" and level != "summary":
        raise ConfigError(f"--level {level} writes tsv or json, not a table")
    config = EvalConfig(checkpoint=checkpoint, inputs=list(files or []), files_from=files_from,
                        context=context, batch_size=batch_size, exclude_oov=exclude_oov,
                        precision=precision, device=device,
                        encoding_errors=encoding_errors, threads=threads,
                        cache=_settings(cache, "--cache", CacheSettings, window=cache_window, theta=cache_theta,
                                        lam=cache_lambda),
                        dynamic=_settings(dynamic, "--dynamic", DynamicSettings,
                                          rule=dynamic_rule, lr=dynamic_lr,
                                          decay=dynamic_decay, segment=dynamic_segment, data=dynamic_data),
                        ngram=_settings(ngram is not None, "--ngram MODEL", NgramSettings, path=ngram,
                                        weight=ngram_weight))
    if level == "summary":
        _summary(config, chosen, progress=not quiet)
    else:
        _rows(config, level, chosen)


_OPTION_NAMES = {"lam": "lambda"}  # option names that are not the setting's


def _settings(on: bool, flag: str, kind, **given):
    """One adaptation's settings from its options (the dataclass's defaults for those not given), or None when it
    is off; an option of an adaptation that is off is a usage error rather than silently ignored."""
    from rnnlm_cli.errors import ConfigError

    given = {name: value for name, value in given.items() if value is not None}
    if not on:
        if given:
            prefix = flag.split()[0]
            name = next(iter(given))
            raise ConfigError(f"{prefix}-{_OPTION_NAMES.get(name, name)} sets {prefix}, which is off: add {flag}")
        return None
    return kind(**given)


def _summary(config, format_name: str, progress: bool) -> None:
    from rnnlm_cli.jobs.evaluate import evaluate

    result = evaluate(config, progress=progress)
    if format_name == "json":
        output.print_json(result.to_dict())
    elif format_name == "tsv":
        rows = [score.to_dict() for score in result.files] + [result.total.to_dict()]
        columns = SUMMARY_COLUMNS + (("backward_ppl",) if result.direction == "both" else ())
        output.write_tsv(columns, ([row[column] for column in columns] for row in rows))
    else:
        output.stdout().print(_table(result))


def _rows(config, level: str, format_name: str) -> None:
    """Per-line or per-token rows, written (and flushed) line by line as they are scored."""
    from rnnlm_cli.jobs.evaluate import iter_line_scores

    columns = LINE_COLUMNS if level == "line" else TOKEN_COLUMNS
    scores = iter_line_scores(config, pieces=level == "token")
    if format_name == "tsv":
        sys.stdout.write("\t".join(columns) + "\n")
    for scored in scores:
        rows = [_line_row(scored)] if level == "line" else _token_rows(scored)
        for row in rows:
            if format_name == "json":
                sys.stdout.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n")
            else:
                output.write_tsv_row(row)
        sys.stdout.flush()


def _line_row(scored) -> list:
    return [scored.file, scored.line, scored.tokens, scored.oov, _finite(scored.log10_prob), _finite(scored.ppl)]


def _token_rows(scored) -> list[list]:
    oov, excluded = set(scored.oov_positions), set(scored.excluded)
    return [[scored.file, scored.line, position + 1, piece, int(position in oov),
             None if position in excluded else _finite(-nll / math.log(10))]
            for position, (piece, nll) in enumerate(zip(scored.pieces, scored.token_nll.tolist()))]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _table(result):
    """The summary for people: narrow enough for an 80-column terminal with PTB-sized numbers, the files named
    by what tells them apart (the folder they share goes into the caption)."""
    from rich import box
    from rich.table import Table

    folder, names = output.shared_folder([score.name for score in result.files])
    caption = (f"{'folder ' + folder + '; ' if folder else ''}context: {result.context}; {result.oov_convention}; "
               f"ppl per token, end-of-sentence tokens included; ppl1 (SRILM's) the same total per token "
               f"without them; precision {result.precision}")
    adapted = describe_adaptations(result.adaptations)
    if adapted:
        caption += f"; adapted: {adapted}"
    both = result.direction == "both"
    if both:
        caption += "; bwd ppl: the right-to-left direction, each line from a fresh state"
    elif result.direction == "backward":
        caption += "; a backward model: each line read right to left"
    table = Table(caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    columns = ("file", "lines", "tokens", "OOV", "nll", "ppl", "ppl1", "word\nppl", "bits/\nbyte") + (
        ("bwd\nppl",) if both else ())
    for column in columns:
        if column == "file":
            table.add_column(column, overflow="fold", min_width=min(12, max(len(name) for name in names)))
        else:
            table.add_column(column, justify="right", no_wrap=True)
    rows = list(zip(names, result.files)) + ([("total", result.total)] if len(result.files) > 1 else [])
    for name, score in rows:
        table.add_row(name, f"{score.lines:,}", f"{score.tokens:,}", f"{score.oov:,}",
                      output.number(score.nll, 1), output.number(score.ppl), output.number(score.ppl1),
                      output.number(score.word_ppl), output.number(score.bits_per_byte, 3),
                      *([output.number(score.backward_ppl)] if both else []),
                      end_section=score is result.files[-1])
    return table


def describe_adaptations(adaptations: dict) -> str:
    """The adaptations in force and their settings, in words ("" when none)."""
    parts = []
    if adaptations.get("cache"):
        cache = adaptations["cache"]
        parts.append(f"cache (window {cache['window']}, theta {cache['theta']:g}, lambda {cache['lambda']:g})")
    if adaptations.get("dynamic"):
        dynamic = adaptations["dynamic"]
        parts.append(f"dynamic evaluation ({dynamic['rule']}, lr {dynamic['lr']:g}, decay {dynamic['decay']:g}, "
                     f"segment {dynamic['segment']})")
    if adaptations.get("ngram"):
        ngram = adaptations["ngram"]
        parts.append(f"{ngram['order']}-gram {ngram['model']} (weight {ngram['weight']:g})")
    return ", ".join(parts)
