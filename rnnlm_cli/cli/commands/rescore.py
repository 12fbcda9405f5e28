from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rnnlm_cli.cli import output
from rnnlm_cli.cli.options import (
    CheckpointArg,
    DeviceOpt,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
)
from rnnlm_cli.config import (
    NbestFormat,
    NgramSettings,
    RescoreContext,
    RescoreWeights,
    Units,
)

NAME = "rescore"

_WEIGHTS = RescoreWeights()
TUNE_TABLE_ROWS = 12  # rows of the --tune table, at most (and the chosen value)


def command(
    checkpoint: CheckpointArg,
    nbest: Annotated[str, typer.Argument(
        metavar="NBEST", show_default=False,
        help="The n-best list: a file, a directory of SRILM *.score(.gz) files, or `-` (stdin).")],
    list_format: Annotated[NbestFormat | None, typer.Option(
        "--format", show_default=False,
        help="kaldi: `UTTID-N words` lines (N the rank); srilm: SRILM's format 3, `acoustic_score lm_score "
             "n_words words` (one file per utterance, or a directory of them); mikolov: `ID words`, lines with "
             "one ID being one utterance's hypotheses; jsonl: one {\"id\", \"hyps\", \"scores\", \"ref\"} object "
             "per line (only hyps needed). [default: guessed from the input]")] = None,
    context: Annotated[RescoreContext, typer.Option(
        help="line: every hypothesis from a fresh state (SRILM's way); utterance: every hypothesis of an utterance "
             "after the previous utterance's first hypothesis, in the list's order (Kaldi's and Mikolov's way).")
    ] = "line",
    units: Annotated[Units | None, typer.Option(
        show_default=False,
        help="The log base of every score read, written and weighted: log10 (SRILM, Mikolov) or ln (Kaldi's "
             "costs, negated). [default: log10 for srilm and mikolov lists, ln for kaldi and jsonl]")] = None,
    lm_weight: Annotated[float | None, typer.Option(
        show_default=False, help=f"total = the list's scores + W x the model's log-probability + ... "
                                 f"[default: {_WEIGHTS.lm_weight:g}]")] = None,
    word_penalty: Annotated[float | None, typer.Option(
        show_default=False, help="Added to the total per word; negative favours fewer words. [default: 0]")] = None,
    oov_penalty: Annotated[float | None, typer.Option(
        show_default=False,
        help="Added per word outside the model's vocabulary, which the model scores as <unk> (a class of words, "
             "so its probability is no one word's); negative penalises them. [default: 0]")] = None,
    rank_weight: Annotated[float | None, typer.Option(
        show_default=False,
        help="Added x the rank the list gave a hypothesis (0 for its first): with a negative weight the "
             "recogniser's order counts where the list has no scores. [default: 0]")] = None,
    score_weight: Annotated[list[float] | None, typer.Option(
        show_default=False,
        help="The weight of one of the list's score columns, in order (srilm: acoustic, then lm); repeat once per "
             "column. [default: 1 each]")] = None,
    costs: Annotated[list[str] | None, typer.Option(
        metavar="FILE", show_default=False,
        help="Kaldi lists: a file of per-hypothesis costs, `UTTID-N cost` (as nbest-to-linear writes ac_cost and "
             "lm_cost); each file is a score column holding minus the cost. Repeat for several; weight them with "
             "--score-weight (an acoustic scale, say).")] = None,
    word_map: Annotated[str | None, typer.Option(
        "--map", metavar="FILE", show_default=False,
        help="Rewrite the hypotheses' words before the model reads them, to fit its training text: one rule per "
             "line, `WORD REPLACEMENT...` (no replacement drops the word; one ending in + joins a run, as "
             "`hundred N+`). The list, its output and the WER keep the list's words; OOV words are counted after "
             "the map. docs/maps/ptb-spoken.map fits spoken-style lists to PTB models.")] = None,
    ngram: Annotated[str | None, typer.Option(
        metavar="MODEL", show_default=False,
        help="Interpolate each token's probability with an n-gram model (ARPA or KenLM binary), as in rnnlm "
             "eval; word-level models only.")] = None,
    ngram_weight: Annotated[float | None, typer.Option(
        min=0, max=1, show_default=False,
        help=f"The n-gram's share: p = (1 - W) p_rnn + W p_ngram. [default: {NgramSettings('').weight:g}]")
    ] = None,
    best: Annotated[bool, typer.Option(
        "--best", help="Write the best hypothesis of each utterance as `uttid text` (Kaldi's text file).")] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Write one JSON object per utterance with every hypothesis's scores, best first; with "
                       "--tune or --report, the report as one JSON document.")] = False,
    output_path: Annotated[str | None, typer.Option(
        "--output", "-o", metavar="PATH", show_default=False,
        help="Write the rescored list here instead of stdout (a directory for a directory of SRILM files). With "
             "--tune or --report, stdout has the report and the list is written only here.")] = None,
    refs: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False,
        help="Reference transcripts, `uttid words` per line, for --tune and --report. [default: the jsonl "
             "list's \"ref\" fields]")] = None,
    tune: Annotated[bool, typer.Option(
        "--tune", help="Search the weights for the lowest WER against the references and print them with the WER "
                       "table. The weights given as options stay as given. Tune on one set, report on another.")
    ] = False,
    report: Annotated[bool, typer.Option(
        "--report", help="Print the WER of the list's first hypotheses, of the rescored best and of the best "
                         "hypotheses possible (the oracle).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Prefix chains per forward pass; the result does not "
                                                        "depend on it.")] = 256,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rerank n-best lists with the model; WER against references.

    Each hypothesis gets the model's log-probability of its words and of the end
    of sentence after them, and a total:

    \b
      total = the list's scores (each x its --score-weight)
              + --lm-weight x the model's log-probability
              + --word-penalty x words + --oov-penalty x OOV words
              + --rank-weight x the list's rank (0 first)

    in the list's units (--units). Hypotheses are reranked by total, ties in the
    list's order, and written back in the list's format: for srilm the lm_score
    column then holds the model's score (as SRILM's ngram -rescore writes it),
    for jsonl "lm_scores" and "totals" are added. Prefixes that hypotheses share
    are scored once. --ngram mixes an n-gram model in; rnnlm eval's --cache and
    --dynamic are not offered here: they adapt to the text read so far, which
    here would be the recogniser's own errors.

    Examples:

    \b
      rnnlm rescore ptb.pt nbest.txt --best > 1best.txt
      rnnlm rescore ptb.pt dev.jsonl --tune
      rnnlm rescore ptb.pt test.jsonl --lm-weight 0.5 --report
      rnnlm rescore ptb.pt nbest-dir --format srilm --lm-weight 8 -o rescored-dir
      rnnlm rescore ptb.pt asr.kaldi --map docs/maps/ptb-spoken.map --best
      rnnlm rescore ptb.pt nbest.txt --costs ac_cost --costs lm_cost \\
          --score-weight 0.1 --score-weight 0.5 --lm-weight 0.5 --best
    """
    from rnnlm_cli.config import RescoreConfig
    from rnnlm_cli.errors import ConfigError
    from rnnlm_cli.jobs.rescore import references, rescore, tune_weights

    output.setup_logging(quiet)
    if best and json_output and not (tune or report):
        raise ConfigError("--best and --json each choose what is written: give one")
    if ngram is None and ngram_weight is not None:
        raise ConfigError("--ngram-weight sets --ngram, which is off: add --ngram MODEL")
    given = {"lm_weight": lm_weight, "word_penalty": word_penalty, "oov_penalty": oov_penalty,
             "rank_weight": rank_weight}
    weights = RescoreWeights(**{name: value for name, value in given.items() if value is not None},
                             score_weights=tuple(score_weight) if score_weight else None)
    config = RescoreConfig(checkpoint=checkpoint, nbest=nbest, format=list_format,
                           context=context, units=units, weights=weights,
                           word_map=word_map, costs=tuple(costs or ()),
                           ngram=None if ngram is None else NgramSettings(ngram, *(
                               [] if ngram_weight is None else [ngram_weight])),
                           batch_size=batch_size, precision=precision, device=device, threads=threads)
    if refs is not None and not (tune or report):
        raise ConfigError("--refs is read by --tune and --report: add one of them")
    if output_path is not None and output_path == nbest:
        raise ConfigError(f"--output {output_path} is the input list; write the rescored list elsewhere")
    result = rescore(config, progress=not quiet)
    if tune or report:
        found = references(result, refs)
        if tune:
            fixed = frozenset(name for name, value in given.items() if value is not None)
            outcome = tune_weights(result, found, weights, fixed)
            weights = outcome.weights
            _print_tuning(result, outcome, found, json_output)
        else:
            _print_report(result, weights, found.rows(result, weights), found, json_output)
        if output_path is not None:
            _write_list(result, weights, best, False, output_path)
    else:
        _write_list(result, weights, best, json_output, output_path)


def _write_list(result, weights, best: bool, json_lines: bool, path: str | None) -> None:
    from rnnlm_cli.nbest import format_utterance, write_srilm_file

    nbest = result.nbest
    orders, totals = result.orders(weights), result.totals(weights)
    directory = nbest.directory and not best and not json_lines
    if directory:
        if path is None:
            from rnnlm_cli.errors import ConfigError

            raise ConfigError("a directory of SRILM lists is written back as a directory: give --output DIR "
                              "(or --best, or --json)")
        Path(path).mkdir(parents=True, exist_ok=True)
    stream = sys.stdout if path is None or directory else open(path, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for u, (utterance, order) in enumerate(zip(nbest.utterances, orders)):
            start = int(result.offsets[u])
            lm = result.lm[start : start + len(order)]
            total = totals[start : start + len(order)]
            if best:
                stream.write(f"{utterance.id} {utterance.hyps[order[0]].text}".rstrip() + "\n")
            elif json_lines:
                stream.write(json.dumps(_utterance_json(result, u, order, total), ensure_ascii=False) + "\n")
            elif directory:
                write_srilm_file(Path(path) / Path(utterance.source).name, format_utterance(nbest, utterance, order,
                                                                                           lm, total))
            else:
                stream.write(format_utterance(nbest, utterance, order, lm, total) + "\n")
            if path is None:
                stream.flush()
    finally:
        if stream is not sys.stdout:
            stream.close()


def _utterance_json(result, u: int, order: list[int], totals) -> dict:
    utterance = result.nbest.utterances[u]
    start = int(result.offsets[u])
    hyps = []
    for i in order:
        index = start + i
        hyps.append({"rank": i, "text": utterance.hyps[i].text, "scores": list(utterance.hyps[i].scores),
                     "lm": float(result.lm[index]), "tokens": int(result.tokens[index]),
                     "words": int(result.words[index]), "oov": int(result.oov[index]), "total": float(totals[i])})
    return {"id": utterance.id, "units": result.units, "best": utterance.hyps[order[0]].text, "hyps": hyps}


def _weights_options(weights, units: str) -> str:
    text = (f"--lm-weight {weights.lm_weight:.4g} --word-penalty {weights.word_penalty:.4g} "
            f"--oov-penalty {weights.oov_penalty:.4g} --rank-weight {weights.rank_weight:.4g}")
    if weights.score_weights is not None:
        text += "".join(f" --score-weight {value:g}" for value in weights.score_weights)
    return text + f" --units {units}"


def _report_document(result, weights, rows, found) -> dict:
    return {"checkpoint": result.checkpoint, "context": result.context, "units": result.units,
            "utterances": len(result.nbest.utterances), "hypotheses": result.hypotheses,
            "without_reference": found.missing, "oov_rate": _oov_rate(result),
            "weights": weights.to_dict(result.scores.shape[1]), "ngram": result.ngram,
            "wer": [row.to_dict() for row in rows]}


def _oov_rate(result) -> float:
    return float(result.oov.sum() / max(1, result.words.sum()))


def _wer_table(rows, caption: str):
    from rich import box
    from rich.table import Table

    names = {"first": "list's first hypotheses", "rescored": "rescored", "oracle": "oracle (best in the list)"}
    table = Table(caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("choice", "errors", "ref words", "WER %"):
        table.add_column(column, justify="left" if column == "choice" else "right")
    for row in rows:
        table.add_row(names[row.name], f"{row.errors:,}", f"{row.words:,}", output.number(row.wer))
    return table


def _summary(result, found) -> str:
    counted = len(result.nbest.utterances) - found.missing
    return (f"{counted:,} utterance{'s' if counted != 1 else ''} with references, "
            f"{result.hypotheses:,} hypotheses; context {result.context}; units {result.units}; "
            f"OOV words {100 * _oov_rate(result):.2f}%")


def _print_report(result, weights, rows, found, json_output: bool) -> None:
    if json_output:
        output.print_json(_report_document(result, weights, rows, found))
        return
    caption = f"{_summary(result, found)}; weights: {_weights_options(weights, result.units)}"
    output.stdout().print(_wer_table(rows, caption))


def _print_tuning(result, outcome, found, json_output: bool) -> None:
    from rich import box
    from rich.table import Table

    options = _weights_options(outcome.weights, result.units)
    if json_output:
        document = _report_document(result, outcome.weights, outcome.rows, found)
        document.update(tuned=list(outcome.tuned), points=outcome.points, options=options,
                        by_value=[{outcome.primary: value, "wer": wer,
                                   "weights": weights.to_dict(result.scores.shape[1])}
                                  for value, wer, weights in outcome.by_value])
        output.print_json(document)
        return
    console = output.stdout()
    primary = outcome.primary.replace("_", " ")
    shown = "each" if len(outcome.by_value) <= TUNE_TABLE_ROWS else "some values of the"
    table = Table(caption=f"the lowest WER for {shown} {primary}, the other weights at their best for it",
                  caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in (primary, "WER %", "lm weight", "word penalty", "oov penalty", "rank weight"):
        table.add_column(column, justify="right")
    chosen = getattr(outcome.weights, outcome.primary)
    step = -(-len(outcome.by_value) // TUNE_TABLE_ROWS)  # every step-th value (and the chosen one): a screenful
    for index, (value, wer, weights) in enumerate(outcome.by_value):
        if index % step and value != chosen:
            continue
        table.add_row(f"{value:.4g}" + (" *" if value == chosen else ""), output.number(wer),
                      f"{weights.lm_weight:.4g}", f"{weights.word_penalty:.4g}", f"{weights.oov_penalty:.4g}",
                      f"{weights.rank_weight:.4g}")
    console.print(table)
    tuned = ", ".join(name.replace("_", " ") for name in outcome.tuned) or "nothing"
    caption = (f"{_summary(result, found)}; tuned {tuned} over {outcome.points:,} settings; best: {options}")
    console.print(_wer_table(outcome.rows, caption))
