"""N-best lists in the formats speech and translation pipelines write, read and written back. No torch here.

- ``kaldi``: ``UTTID-N word word ...``, one hypothesis per line; the key's last ``-N`` is its rank, the rest the
  utterance. No scores (Kaldi keeps its costs in separate files).
- ``srilm``: SRILM's n-best format 3, ``acoustic_score lm_score n_words word ...`` per line (log10), one file per
  utterance (named after it: ``ID.score`` or ``ID.score.gz``), or a directory of such files.
- ``mikolov``: ``ID word word ...``, as Mikolov's ``rnnlm -nbest`` reads it; lines with the same ID are the
  alternatives of one utterance.
- ``jsonl``: one utterance per line, ``{"id": ..., "hyps": [...], "scores": [...], "ref": ...}``; only ``hyps`` is
  required, each score is a number or a list of numbers, and other fields are kept.

Within an utterance the hypotheses keep the order they were read in, which is the recogniser's ranking.
Blank lines are skipped. Every problem is an ``InputError`` naming the file and line.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlm_cli.errors import InputError
from rnnlm_cli.textio import STDIN, display_name, iter_lines

FORMATS = ("kaldi", "srilm", "mikolov", "jsonl")
SRILM_SUFFIXES = (".score.gz", ".score")
# the unit each format's scores are in, and so the default of --units: SRILM and Mikolov's rnnlm write log10
# probabilities; Kaldi's costs are natural-log (negated), and Python pipelines mostly use natural logs too
DEFAULT_UNITS = {"kaldi": "ln", "srilm": "log10", "mikolov": "log10", "jsonl": "ln"}
_KALDI_KEY = re.compile(r"^(.+)-(\d+)$")


@dataclass
class Hypothesis:
    text: str  # the words, separated by single spaces
    scores: tuple[float, ...] = ()  # the list's own scores (srilm: acoustic, lm)
    key: str = ""  # kaldi: the hypothesis's key; mikolov: the utterance's ID as written
    line: int = 0  # where it was read (for messages)


@dataclass
class Utterance:
    id: str
    hyps: list[Hypothesis] = field(default_factory=list)
    ref: str | None = None  # jsonl's "ref" field
    source: str = ""  # the file it came from
    fields: dict[str, Any] | None = None  # jsonl: the object as read, written back with hyps and scores reordered


@dataclass
class NbestList:
    format: str
    utterances: list[Utterance]
    score_names: tuple[str, ...]  # one name per score column of every hypothesis
    directory: bool = False  # srilm: read from a directory of per-utterance files

    @property
    def hypotheses(self) -> int:
        return sum(len(utterance.hyps) for utterance in self.utterances)


def read_nbest(path: str, format: str | None = None) -> NbestList:
    """The n-best list at ``path`` (``-``: stdin; a directory: SRILM files), in ``format`` or the one guessed."""
    if path != STDIN and Path(path).is_dir():
        if format not in (None, "srilm"):
            raise InputError(f"{path}: is a directory; only --format srilm reads a directory (of *.score files)")
        return _read_srilm_directory(path)
    name = display_name(path)
    lines = [(number, line) for number, line in enumerate(_lines(path), start=1) if line.strip()]
    if not lines:
        raise InputError(f"{name}: holds no hypotheses")
    chosen = format or guess_format(name, lines)
    if chosen == "jsonl":
        utterances = _parse_jsonl(name, lines)
        width = len(utterances[0].hyps[0].scores)  # _parse_jsonl checked that every hypothesis has as many
        return NbestList("jsonl", utterances, ("score",) if width == 1 else
                         tuple(f"score{index + 1}" for index in range(width)))
    if chosen == "srilm":
        return NbestList("srilm", [_parse_srilm(name, _srilm_id(path), lines)], ("acoustic", "lm"))
    if chosen == "kaldi":
        return NbestList("kaldi", _parse_keyed(name, lines, kaldi=True), ())
    return NbestList("mikolov", _parse_keyed(name, lines, kaldi=False), ())


def _lines(path: str) -> Iterator[str]:
    if path != STDIN and path.endswith(".gz"):
        try:
            with gzip.open(path, "rt", encoding="utf-8") as file:
                yield from (line.rstrip("\r\n") for line in file)
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: cannot read as gzipped UTF-8 text ({error})") from None
    else:
        yield from iter_lines(path)


def guess_format(name: str, lines: Sequence[tuple[int, str]]) -> str:
    """The format of a list from its lines, or an InputError saying why it cannot tell."""
    first_number, first = lines[0]
    if first.lstrip().startswith("{"):
        return "jsonl"
    if first.startswith("NBestList"):
        raise InputError(f"{name}, line {first_number}: SRILM's NBestList1.0 / 2.0 formats are not read; write the "
                         f"list in format 3 (acoustic_score lm_score n_words words...)")
    if _srilm_fields(first) is not None:
        return "srilm"
    keys = [line.split(maxsplit=1)[0] for _, line in lines]
    kaldi = [bool(_KALDI_KEY.match(key)) for key in keys]
    if all(kaldi) and len(set(keys)) == len(keys):
        return "kaldi"
    if not any(kaldi) or len(set(keys)) < len(keys):
        return "mikolov"
    odd = kaldi.index(False)
    raise InputError(f"{name}: cannot tell the format: line {first_number}'s key {keys[0]!r} is Kaldi's UTTID-N, "
                     f"but line {lines[odd][0]}'s {keys[odd]!r} is not; give --format kaldi|srilm|mikolov|jsonl")


def _srilm_fields(line: str) -> tuple[float, float, int, str] | None:
    parts = line.split(maxsplit=3)
    if len(parts) < 3:
        return None
    try:
        acoustic, lm = float(parts[0]), float(parts[1])
        words = int(parts[2])
    except ValueError:
        return None
    if words < 0:
        return None
    return acoustic, lm, words, parts[3] if len(parts) > 3 else ""


def _parse_srilm(name: str, utterance_id: str, lines: Sequence[tuple[int, str]]) -> Utterance:
    utterance = Utterance(utterance_id, source=name)
    for number, line in lines:
        fields = _srilm_fields(line)
        if fields is None:
            parts = line.split()
            bad = next((part for part in parts[:2] if not _is_number(part)), None)
            what = (f"{bad!r} is not a number" if bad is not None else
                    f"{parts[2]!r} is not a word count" if len(parts) > 2 else "it has fewer than 3 fields")
            raise InputError(f"{name}, line {number}: not an SRILM format 3 hypothesis (acoustic_score lm_score "
                             f"n_words words...): {what}")
        acoustic, lm, _, text = fields
        utterance.hyps.append(Hypothesis(" ".join(text.split()), (acoustic, lm), line=number))
    return utterance


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _srilm_id(path: str) -> str:
    if path == STDIN:
        return "-"
    base = Path(path).name
    for suffix in SRILM_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return Path(path).stem


def _read_srilm_directory(path: str) -> NbestList:
    files = sorted(file for file in Path(path).iterdir() if file.name.endswith(SRILM_SUFFIXES) and file.is_file())
    if not files:
        raise InputError(f"{path}: holds no SRILM n-best files (*.score or *.score.gz)")
    utterances = []
    for file in files:
        lines = [(number, line) for number, line in enumerate(_lines(str(file)), start=1) if line.strip()]
        utterances.append(_parse_srilm(str(file), _srilm_id(str(file)), lines))
    return NbestList("srilm", utterances, ("acoustic", "lm"), directory=True)


def _parse_keyed(name: str, lines: Sequence[tuple[int, str]], kaldi: bool) -> list[Utterance]:
    """Kaldi (``UTTID-N words``) or Mikolov (``ID words``) lines, grouped by utterance in order of first sight."""
    by_id: dict[str, Utterance] = {}
    keys: set[str] = set()
    for number, line in lines:
        key, _, text = line.strip().partition(" ")
        if kaldi:
            match = _KALDI_KEY.match(key)
            if match is None:
                raise InputError(f"{name}, line {number}: {key!r} is not a Kaldi key (UTTID-N, N the rank), so the "
                                 f"line has no key; a Kaldi n-best line is `UTTID-N word word ...`")
            if key in keys:
                raise InputError(f"{name}, line {number}: the key {key!r} appears twice")
            keys.add(key)
            utterance_id = match.group(1)
        else:
            if line[0].isspace():
                raise InputError(f"{name}, line {number}: starts with blank space, so it has no ID; a Mikolov "
                                 f"n-best line is `ID word word ...`")
            utterance_id = key
        if line.lstrip().startswith("{"):
            raise InputError(f"{name}, line {number}: a JSON object in a {'Kaldi' if kaldi else 'Mikolov'} list "
                             f"(mixed formats?)")
        utterance = by_id.setdefault(utterance_id, Utterance(utterance_id, source=name))
        utterance.hyps.append(Hypothesis(" ".join(text.split()), key=key, line=number))
    return list(by_id.values())


def _parse_jsonl(name: str, lines: Sequence[tuple[int, str]]) -> list[Utterance]:
    utterances = []
    columns = None
    for number, line in lines:
        where = f"{name}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not a JSON object ({error.msg}); a JSON Lines n-best list holds one "
                             f'{{"id": ..., "hyps": [...]}} per line') from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: a JSON {type(record).__name__}, not an object with \"hyps\"")
        hyps = record.get("hyps")
        if not isinstance(hyps, list) or not all(isinstance(hyp, str) for hyp in hyps):
            raise InputError(f'{where}: needs "hyps", a list of strings')
        if not hyps:
            raise InputError(f'{where}: "hyps" is empty')
        scores = record.get("scores")
        if scores is None:
            rows: list[tuple[float, ...]] = [()] * len(hyps)
        else:
            if not isinstance(scores, list) or len(scores) != len(hyps):
                raise InputError(f'{where}: "scores" must be a list with one entry per hypothesis ({len(hyps)})')
            rows = [_score_row(where, score) for score in scores]
        width = {len(row) for row in rows}
        if len(width) > 1 or (columns is not None and width != {columns}):
            raise InputError(f"{where}: every hypothesis needs the same number of scores "
                             f"({columns if columns is not None else min(width)})")
        columns = width.pop()
        ref = record.get("ref")
        if ref is not None and not isinstance(ref, str):
            raise InputError(f'{where}: "ref" must be a string')
        utterance_id = str(record.get("id", number))
        utterance = Utterance(utterance_id, ref=ref, source=name, fields=record)
        utterance.hyps = [Hypothesis(" ".join(hyp.split()), row, line=number) for hyp, row in zip(hyps, rows)]
        utterances.append(utterance)
    return utterances


def _score_row(where: str, score: Any) -> tuple[float, ...]:
    values = score if isinstance(score, list) else [score]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f'{where}: the score {value!r} is not a finite number')
    return tuple(float(value) for value in values)


def format_utterance(nbest: NbestList, utterance: Utterance, order: Sequence[int],
                     lm_scores: Sequence[float], totals: Sequence[float]) -> str:
    """An utterance's hypotheses in ``order``, in the list's own format (without a trailing newline).

    srilm: the lm_score column holds the new language model score (as SRILM's ``ngram -rescore`` writes it);
    jsonl: the object as read, with "hyps" and "scores" reordered and "lm_scores" and "totals" added.
    """
    hyps = utterance.hyps
    if nbest.format in ("kaldi", "mikolov"):  # each line's key as read: Kaldi's UTTID-N, Mikolov's ID
        return "\n".join(f"{hyps[i].key} {hyps[i].text}".rstrip() for i in order)
    if nbest.format == "srilm":
        return "\n".join(f"{hyps[i].scores[0]:.6g} {lm_scores[i]:.6g} {len(hyps[i].text.split())} {hyps[i].text}"
                         .rstrip() for i in order)
    record = dict(utterance.fields or {"id": utterance.id})
    record["hyps"] = [record["hyps"][i] for i in order] if "hyps" in record else [hyps[i].text for i in order]
    if "scores" in record:
        record["scores"] = [record["scores"][i] for i in order]
    record["lm_scores"] = [round(lm_scores[i], 6) for i in order]
    record["totals"] = [round(totals[i], 6) for i in order]
    return json.dumps(record, ensure_ascii=False)


def attach_costs(nbest: NbestList, paths: Sequence[str]) -> None:
    """Add one score column per file of Kaldi costs (``UTTID-N cost`` lines, as ``nbest-to-linear`` writes
    ``ac_cost`` and ``lm_cost``) to a Kaldi list: each column holds minus the cost, a natural-log score."""
    if not paths:
        return
    if nbest.format != "kaldi":
        raise InputError(f"--costs adds Kaldi's per-hypothesis costs (UTTID-N cost) to a Kaldi list, and this list "
                         f"is {nbest.format}")
    names = []
    for path in paths:
        costs: dict[str, float] = {}
        for number, line in enumerate(iter_lines(path), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not _is_number(fields[1]) or not math.isfinite(float(fields[1])):
                raise InputError(f"{display_name(path)}, line {number}: not a Kaldi cost line (UTTID-N cost)")
            costs[fields[0]] = float(fields[1])
        for utterance in nbest.utterances:
            for hyp in utterance.hyps:
                if hyp.key not in costs:
                    raise InputError(f"{display_name(path)}: no cost for {hyp.key} (line {hyp.line} of the list)")
                hyp.scores = (*hyp.scores, -costs[hyp.key])
        names.append(Path(path).name)
    nbest.score_names = (*nbest.score_names, *names)


class WordMap:
    """Rewrites of the words a model reads, from a file of rules ``WORD REPLACEMENT...``, one per line (``#``
    starts a comment). The replacement may be several words, or none (the word is dropped). A replacement ending
    in ``+`` joins: a run of words whose rules give the same joining replacement becomes one copy of it, so with
    ``hundred N+`` and ``fifty N+``, "fifty hundred" gives one "N" (PTB writes numbers so)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rules: dict[str, tuple[tuple[str, ...], bool]] = {}
        for number, line in enumerate(iter_lines(path), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            word, replacement = fields[0], fields[1:]
            joins = bool(replacement) and replacement[-1].endswith("+") and len(replacement[-1]) > 1
            if joins:
                replacement[-1] = replacement[-1][:-1]
            if word in self.rules:
                raise InputError(f"{display_name(path)}, line {number}: a second rule for {word!r}")
            self.rules[word] = (tuple(replacement), joins)
        if not self.rules:
            raise InputError(f"{display_name(path)}: holds no rules (each line: WORD REPLACEMENT...)")

    def apply(self, text: str) -> str:
        out: list[str] = []
        joining: tuple[str, ...] | None = None  # the joining replacement the last word gave, if any
        for word in text.split():
            replacement, joins = self.rules.get(word, ((word,), False))
            if joins and replacement == joining:
                continue
            out.extend(replacement)
            joining = replacement if joins else None
        return " ".join(out)


def read_refs(path: str) -> dict[str, str]:
    """References, ``uttid text`` per line (Kaldi's ``text`` file)."""
    refs: dict[str, str] = {}
    for number, line in enumerate(iter_lines(path), start=1):
        if not line.strip():
            continue
        key, _, text = line.strip().partition(" ")
        if key in refs:
            raise InputError(f"{display_name(path)}, line {number}: the utterance {key!r} has a second reference")
        refs[key] = " ".join(text.split())
    return refs


def write_srilm_file(path: Path, text: str) -> None:
    """One utterance's list, gzipped when the name ends in .gz."""
    data = (text + "\n").encode("utf-8")
    if path.name.endswith(".gz"):
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as file:
            file.write(data)
        data = buffer.getvalue()
    path.write_bytes(data)
