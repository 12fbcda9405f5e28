"""Word, character and sentencepiece (BPE / unigram) tokenizers behind one small interface.

Every tokenizer maps one line of text to a list of ids *without* the end-of-sentence id; callers
append ``eos_id`` at each line end. Ids 0 and 1 are always ``<unk>`` and ``<eos>``. A tokenizer
serialises to plain data (``to_dict``) and back (``tokenizer_from_dict``). No torch here.
"""

from __future__ import annotations

import io
import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from rnnlm_cli.errors import ConfigError, TokenizerError

log = logging.getLogger(__name__)

UNK = "<unk>"
EOS = "<eos>"
UNK_ID = 0
EOS_ID = 1
Kind = Literal["word", "char", "bpe", "unigram"]
KINDS = get_args(Kind)
DEFAULT_SUBWORD_VOCAB = 8000
# sentencepiece's recommendation for languages with large character sets (Japanese, Chinese);
# byte fallback covers the rest, so no character is ever unknown.
DEFAULT_CHARACTER_COVERAGE = 0.9995
# sentencepiece trains on at most this many lines, sampled uniformly from a bigger training text
SENTENCEPIECE_SAMPLE_LINES = 1_000_000
SENTENCEPIECE_SEED = 0
# ids a sentencepiece model spends before any character: <unk>, <eos> and the 256 byte pieces of byte fallback
SENTENCEPIECE_META_PIECES = 2 + 256
# sentencepiece refuses a character_coverage below this; rnnlm then chooses the characters kept itself
SENTENCEPIECE_MIN_COVERAGE = 0.98
SPACE_SYMBOL = "\u2581"  # sentencepiece's "▁": a space, and the start of every line
# sentencepiece leaves out longer lines (in UTF-8 bytes) when it trains; its default, 4192, would drop a long
# paragraph of Japanese prose (about 1,400 characters)
SENTENCEPIECE_MAX_LINE_BYTES = 1 << 16


@dataclass(frozen=True)
class CharacterPlan:
    """Which characters a sentencepiece model keeps whole (the rest are spelled in UTF-8 bytes)."""

    keep: frozenset[str] | None  # None: sentencepiece chooses them by ``coverage``
    coverage: float  # the share of the sample's character occurrences kept whole
    needed: int  # the vocabulary size that keeps the coverage asked for


def plan_characters(counts: Counter[str], vocab_size: int, coverage: float) -> CharacterPlan:
    """The characters to keep, as sentencepiece counts them: the most frequent first, while the share taken is below
    ``coverage``. When those and the SENTENCEPIECE_META_PIECES do not fit in ``vocab_size``, the most frequent
    characters that fit; below SENTENCEPIECE_MIN_COVERAGE, the characters themselves (sentencepiece takes none
    lower)."""
    ordered = counts.most_common()
    total = sum(counts.values()) or 1
    taken = required = 0
    for _, count in ordered:
        if taken / total >= coverage:
            break
        taken, required = taken + count, required + 1
    needed = required + SENTENCEPIECE_META_PIECES
    if needed <= vocab_size and coverage >= SENTENCEPIECE_MIN_COVERAGE:
        return CharacterPlan(None, coverage, needed)
    # the space symbol stays whatever its rank: sentencepiece puts one at the start of every line it reads
    first = [(char, count) for char, count in ordered if char == SPACE_SYMBOL]
    others = [(char, count) for char, count in ordered if char != SPACE_SYMBOL]
    kept = first + others[: max(0, min(required, vocab_size - SENTENCEPIECE_META_PIECES) - len(first))]
    return CharacterPlan(frozenset(char for char, _ in kept), sum(count for _, count in kept) / total, needed)


@dataclass(frozen=True)
class Encoded:
    ids: list[int]  # one id per token, without the end-of-sentence id
    oov_positions: tuple[int, ...] = ()  # tokens whose word (or character) was outside the vocabulary

    @property
    def oov(self) -> int:
        """Input words (or characters) that fell outside the vocabulary and became <unk>."""
        return len(self.oov_positions)


class Tokenizer(ABC):
    kind: str
    lowercase: bool
    unk_id = UNK_ID
    eos_id = EOS_ID

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, line: str) -> Encoded:
        """Tokens of one line (without the end-of-sentence id) and its out-of-vocabulary count."""

    def encode_many(self, lines: Sequence[str]) -> list[Encoded]:
        return [self.encode(line) for line in lines]

    @abstractmethod
    def piece(self, token_id: int) -> str:
        """The printable form of one token, as in per-token tables."""

    def surface(self, line: str) -> list[str]:
        """The text of each token of ``line``, aligned with ``encode(line).ids``."""
        return [self.piece(token_id) for token_id in self.encode(line).ids]

    @abstractmethod
    def _decode_line(self, ids: Sequence[int]) -> str: ...

    def byte_values(self) -> list[int] | None:
        """For a tokenizer with byte pieces (sentencepiece's byte fallback): each id's byte, -1 for the ids that
        are not bytes; None when no piece is a byte, so that every sequence of pieces is valid text."""
        return None

    def decode(self, ids: Iterable[int]) -> str:
        """Text for a run of ids; each end-of-sentence id becomes a line break."""
        lines: list[list[int]] = [[]]
        for token_id in ids:
            if token_id == self.eos_id:
                lines.append([])
            else:
                lines[-1].append(int(token_id))
        return "\n".join(self._decode_line(line) for line in lines)

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, int, bool, list, bytes) that :func:`tokenizer_from_dict` turns back into this."""


class _VocabularyTokenizer(Tokenizer):
    """Word and character tokenizers: an explicit list of tokens, ids by position."""

    def __init__(self, tokens: list[str], lowercase: bool) -> None:
        if tokens[:2] != [UNK, EOS]:
            raise TokenizerError(f"a {self.kind} vocabulary must start with {UNK} and {EOS}")
        self.tokens = tokens
        self.lowercase = lowercase
        self._index = {token: token_id for token_id, token in enumerate(tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @staticmethod
    @abstractmethod
    def _units(line: str) -> list[str]:
        """Split a line into the units the vocabulary holds (words or characters)."""

    @classmethod
    def build(cls, lines: Iterable[str], vocab_size: int | None, min_freq: int, lowercase: bool):
        """Count units over ``lines``; keep those seen ``min_freq`` times, most frequent first."""
        counts: Counter[str] = Counter()
        for line in lines:
            counts.update(cls._units(line.lower() if lowercase else line))
        for special in (UNK, EOS):
            counts.pop(special, None)
        # most_common sorts stably, so ties keep the order of first appearance
        kept = [unit for unit, count in counts.most_common() if count >= min_freq]
        if vocab_size is not None:
            kept = kept[: max(vocab_size - 2, 0)]
        return cls([UNK, EOS, *kept], lowercase)

    def encode(self, line: str) -> Encoded:
        units = self._units(line.lower() if self.lowercase else line)
        index = self._index
        ids = [index.get(unit, UNK_ID) for unit in units]
        return Encoded(ids, tuple(position for position, unit in enumerate(units) if unit not in index))

    def piece(self, token_id: int) -> str:
        return self.tokens[token_id]

    def surface(self, line: str) -> list[str]:
        return self._units(line.lower() if self.lowercase else line)  # unknown words keep their own text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lowercase": self.lowercase, "tokens": list(self.tokens)}


class WordTokenizer(_VocabularyTokenizer):
    """Whitespace-separated words; words outside the vocabulary become ``<unk>``."""

    kind = "word"

    @staticmethod
    def _units(line: str) -> list[str]:
        return line.split()

    def _decode_line(self, ids: Sequence[int]) -> str:
        return " ".join(self.tokens[token_id] for token_id in ids)


class CharTokenizer(_VocabularyTokenizer):
    """Unicode characters; the line end is the end-of-sentence token."""

    kind = "char"

    @staticmethod
    def _units(line: str) -> list[str]:
        return list(line)

    def _decode_line(self, ids: Sequence[int]) -> str:
        return "".join("\ufffd" if token_id == UNK_ID else self.tokens[token_id] for token_id in ids)


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model (BPE or unigram), held as its serialised bytes."""

    def __init__(self, kind: str, model: bytes, lowercase: bool) -> None:
        import sentencepiece

        self.kind = kind
        self.model = model
        self.lowercase = lowercase
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model)
        if (self._processor.unk_id(), self._processor.eos_id()) != (UNK_ID, EOS_ID):
            raise TokenizerError(f"the sentencepiece model must use id {UNK_ID} for <unk> and {EOS_ID} for <eos>")

    @classmethod
    def train(
        cls,
        kind: str,
        lines: Iterable[str],
        vocab_size: int | None,
        lowercase: bool,
        character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
        reread: Callable[[], Iterable[str]] | None = None,
    ) -> SentencePieceTokenizer:
        """Train in memory: no model file is written anywhere.

        Text is taken as it is (no Unicode normalisation, spaces kept), so decoding gives back
        exactly the text that was encoded. The text is read twice: ``lines`` to count its characters (and
        choose those to keep, ``plan_characters``), then ``reread()`` for sentencepiece, which trains on a
        uniform sample of SENTENCEPIECE_SAMPLE_LINES lines; without ``reread`` the lines are held in memory.
        """
        import sentencepiece

        size = vocab_size or DEFAULT_SUBWORD_VOCAB
        if size <= SENTENCEPIECE_META_PIECES:
            raise ConfigError(f"--vocab-size {size} leaves no room for a {kind} model's pieces: <unk>, <eos> and the "
                              f"256 byte pieces that spell rare characters take {SENTENCEPIECE_META_PIECES} ids; "
                              f"give at least {SENTENCEPIECE_META_PIECES + 100}, or use --kind char")
        if reread is None:
            held = list(lines)
            lines, reread = held, lambda: held

        def text(source: Iterable[str]) -> Iterator[str]:
            """The lines sentencepiece reads: lowercased if asked, without those it would leave out."""
            for line in source:
                if len(line.encode("utf-8")) <= SENTENCEPIECE_MAX_LINE_BYTES:
                    yield line.lower() if lowercase else line

        counts: Counter[str] = Counter()
        starts = 0
        for line in text(lines):
            counts.update(line.replace(" ", SPACE_SYMBOL))
            starts += 1
        distinct = len(counts)  # the text's own characters (a space counted as one)
        counts[SPACE_SYMBOL] += starts  # sentencepiece puts one before every line
        plan = plan_characters(counts, size, character_coverage)
        if plan.keep is not None and plan.needed > size:
            log.warning(
                "the training text has %s distinct characters; keeping %.2f%% of its characters whole "
                "(--character-coverage %g) takes a vocabulary of %s (with <unk>, <eos> and 256 byte pieces), "
                "so with --vocab-size %s it keeps the %s most frequent (%.2f%% of the text) and spells the rest "
                "in UTF-8 bytes; give --vocab-size %s to keep them all", f"{distinct:,}",
                100 * character_coverage, character_coverage, f"{plan.needed:,}", f"{size:,}",
                f"{len(plan.keep):,}", 100 * plan.coverage, plan.needed)
        keep = plan.keep
        # sentencepiece keeps every character it sees at coverage 1: it sees only those to keep
        sentences = text(reread()) if keep is None else (
            "".join(char for char in line if char in keep or char == " ") for line in text(reread()))
        model = io.BytesIO()
        sentencepiece.set_random_generator_seed(SENTENCEPIECE_SEED)  # the same text gives the same model
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=model,
                model_type=kind,
                vocab_size=size,
                # a soft limit: a small corpus gets a smaller vocabulary instead of an error
                hard_vocab_limit=False,
                # bounded memory on big corpora: train on a uniform sample of this many lines
                input_sentence_size=SENTENCEPIECE_SAMPLE_LINES,
                shuffle_input_sentence=True,
                character_coverage=1.0 if plan.keep is not None else character_coverage,
                max_sentence_length=SENTENCEPIECE_MAX_LINE_BYTES,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                unk_id=UNK_ID,
                eos_id=EOS_ID,
                bos_id=-1,
                pad_id=-1,
                unk_piece=UNK,
                eos_piece=EOS,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise TokenizerError(f"sentencepiece could not train a {kind} model: {_first_line(error)}") from None
        tokenizer = cls(kind, model.getvalue(), lowercase)
        if vocab_size is not None and tokenizer.vocab_size < vocab_size:
            log.warning("the training text supports only %d %s pieces, not the %d asked for",
                        tokenizer.vocab_size, kind, vocab_size)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def encode(self, line: str) -> Encoded:
        return self.encode_many([line])[0]

    def encode_many(self, lines: Sequence[str]) -> list[Encoded]:
        texts = [line.lower() for line in lines] if self.lowercase else list(lines)
        return [Encoded(ids, _unknown(ids)) for ids in self._processor.encode(texts)]

    def piece(self, token_id: int) -> str:
        return self._processor.id_to_piece(token_id)

    def _decode_line(self, ids: Sequence[int]) -> str:
        return self._processor.decode(list(ids))

    def byte_values(self) -> list[int] | None:
        processor = self._processor  # byte pieces are named <0x00> ... <0xFF>
        values = [int(processor.id_to_piece(token)[3:5], 16) if processor.is_byte(token) else -1
                  for token in range(self.vocab_size)]
        return values if any(value >= 0 for value in values) else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lowercase": self.lowercase, "model": self.model}


def _unknown(ids: list[int]) -> tuple[int, ...]:
    return tuple(position for position, token_id in enumerate(ids) if token_id == UNK_ID) if UNK_ID in ids else ()


def _first_line(error: Exception) -> str:
    """sentencepiece's message without its source-file prefix ("INTERNAL: src/x.cc(12) [check] ...")."""
    text = str(error).strip()
    line = text.splitlines()[-1] if text else type(error).__name__
    if "required_chars" in line:  # rnnlm sizes the characters to the vocabulary, so this should not come
        return "the vocabulary is too small for the characters to keep: raise --vocab-size"
    return line.split("] ", 1)[-1].replace("--character_coverage option", "--character-coverage")


def train_tokenizer(
    kind: str,
    lines: Iterable[str],
    vocab_size: int | None = None,
    min_freq: int = 1,
    lowercase: bool = False,
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
    reread: Callable[[], Iterable[str]] | None = None,
) -> Tokenizer:
    """Build a tokenizer of ``kind`` from training lines only, reading ``lines`` once.

    ``vocab_size`` counts every id, the special tokens included; ``None`` keeps every word or
    character seen ``min_freq`` times, and means 8000 for sentencepiece. ``reread`` gives the lines again
    (sentencepiece reads them twice; without it they are held in memory).
    """
    if vocab_size is not None and vocab_size < 3:
        raise ConfigError("--vocab-size must be at least 3 (<unk>, <eos> and one token)")
    if min_freq < 1:
        raise ConfigError("--min-freq must be at least 1")
    if kind == "word":
        return WordTokenizer.build(lines, vocab_size, min_freq, lowercase)
    if kind == "char":
        return CharTokenizer.build(lines, vocab_size, min_freq, lowercase)
    if kind in ("bpe", "unigram"):
        if min_freq != 1:
            raise ConfigError("--min-freq applies to word and char tokenizers; sentencepiece uses --vocab-size")
        return SentencePieceTokenizer.train(kind, lines, vocab_size, lowercase, character_coverage, reread)
    raise ConfigError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output."""
    try:
        kind = data["kind"]
        lowercase = bool(data.get("lowercase", False))
        if kind == "word":
            return WordTokenizer(list(data["tokens"]), lowercase)
        if kind == "char":
            return CharTokenizer(list(data["tokens"]), lowercase)
        if kind in ("bpe", "unigram"):
            return SentencePieceTokenizer(kind, bytes(data["model"]), lowercase)
    except KeyError as error:
        raise TokenizerError(f"incomplete tokenizer data (missing {error})") from None
    except (TypeError, ValueError):
        raise TokenizerError("malformed tokenizer data (an entry of the wrong kind)") from None
    except RuntimeError:
        raise TokenizerError("its sentencepiece model does not parse (the bytes are damaged or not a model)"
                             ) from None
    raise TokenizerError(f"unknown tokenizer kind {kind!r}")
