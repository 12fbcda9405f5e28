"""`rnnlm rescore`: n-best lists read and written in four formats, scored as `rnnlm eval` scores the same lines,
combined, reranked, tuned and judged by word error rate."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest
import torch

from rnnlm_cli.checkpoint import load_for_inference
from rnnlm_cli.scoring import score_prefix_tree, score_token_lines

LN10 = math.log(10)

# three utterances, with repeated hypotheses and shared prefixes, as recognisers write them
UTTERANCES = [
    ("utt1", ["Yuki gave the umbrella to Sam .", "Yuki gave the umbrella to Sam", "Yuki gave an umbrella to Sam .",
              "Yuki gave the umbrella to Sam ."]),
    ("utt2", ["Where did Hana put the book ?", "Where did Hana put a book ?", "where did hana put the book"]),
    ("utt3", ["Hana gave the letter to Ken .", "Hana gave the letter to Ken . .", "Hana gave zzyzx letter to Ken ."]),
]
REFS = {"utt1": "Yuki gave the umbrella to Sam .", "utt2": "Where did Hana put the book ?",
        "utt3": "Hana gave the letter to Ken ."}


def kaldi_text() -> str:
    return "".join(f"{uid}-{rank} {hyp}\n" for uid, hyps in UTTERANCES for rank, hyp in enumerate(hyps, start=1))


def mikolov_text() -> str:
    return "".join(f"{number} {hyp}\n" for number, (_, hyps) in enumerate(UTTERANCES, start=1) for hyp in hyps)


def jsonl_text(scores: bool = True, refs: bool = True) -> str:
    rows = []
    for uid, hyps in UTTERANCES:
        row = {"id": uid, "hyps": hyps, "extra": [1, 2]}
        if scores:
            row["scores"] = [-1.5 * rank for rank in range(len(hyps))]
        if refs:
            row["ref"] = REFS[uid]
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


def srilm_text(hyps: list[str]) -> str:
    return "".join(f"{-100.0 - 3 * rank:g} {-20.5 + rank:g} {len(hyp.split())} {hyp}\n"
                   for rank, hyp in enumerate(hyps))


@pytest.fixture
def lists(tmp_path) -> dict[str, Path]:
    files = {"kaldi": tmp_path / "nbest.kaldi", "mikolov": tmp_path / "nbest.mik", "jsonl": tmp_path / "nbest.jsonl",
             "srilm": tmp_path / "utt1.score", "srilm-dir": tmp_path / "srilm"}
    files["kaldi"].write_text(kaldi_text(), encoding="utf-8")
    files["mikolov"].write_text(mikolov_text(), encoding="utf-8")
    files["jsonl"].write_text(jsonl_text(), encoding="utf-8")
    files["srilm"].write_text(srilm_text(UTTERANCES[0][1]), encoding="utf-8")
    files["srilm-dir"].mkdir()
    for uid, hyps in UTTERANCES:
        (files["srilm-dir"] / f"{uid}.score.gz").write_bytes(gzip.compress(srilm_text(hyps).encode()))
    return files


def rescored(cli, model, path, *args) -> list[dict]:
    result = cli("rescore", model, path, "--json", "-q", *args)
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


def eval_log10(cli, model, lines: list[str], tmp_path: Path, context: str = "line") -> list[float]:
    path = tmp_path / f"lines-{len(lines)}.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    result = cli("eval", model, path, "--context", context, "--level", "line", "--format", "json", "-q")
    return [json.loads(row)["log10_prob"] for row in result.stdout.splitlines()]


@pytest.mark.parametrize("name", ["kaldi", "mikolov", "jsonl", "srilm"])
def test_each_format_round_trips_with_the_model_weighted_out(cli, word_model, lists, name):
    path = lists[name]
    args = ["--lm-weight", "0"] + (["--score-weight", "0", "--score-weight", "0"] if name == "srilm" else []) + \
        (["--score-weight", "0"] if name == "jsonl" else [])
    result = cli("rescore", word_model, path, *args, "-q")  # the format guessed
    assert result.stderr == ""
    written = result.stdout.splitlines()
    original = path.read_text(encoding="utf-8").splitlines()
    if name in ("kaldi", "mikolov"):
        assert written == original
    elif name == "srilm":
        assert [line.split(maxsplit=3)[3] for line in written] == [line.split(maxsplit=3)[3] for line in original]
        assert [line.split()[0] for line in written] == [line.split()[0] for line in original]  # acoustic kept
        assert [line.split()[2] for line in written] == [line.split()[2] for line in original]
    else:
        for line, source in zip(written, original):
            got, want = json.loads(line), json.loads(source)
            assert {key: got[key] for key in want} == want  # every field kept, hyps and scores in their order
            assert len(got["lm_scores"]) == len(got["totals"]) == len(want["hyps"])
            assert got["totals"] == [0.0] * len(want["hyps"])
    # the same with the format named, and from stdin
    assert cli("rescore", word_model, "-", "--format", name, *args, "-q",
               input=path.read_text(encoding="utf-8")).stdout == result.stdout


def test_a_directory_of_gzipped_srilm_lists_is_written_back_as_one(cli, word_model, lists, tmp_path):
    out = tmp_path / "rescored"
    result = cli("rescore", word_model, lists["srilm-dir"], "-o", out, "--score-weight", "0", "--score-weight", "0",
                 "--lm-weight", "0", "-q")
    assert result.stdout == "" and result.stderr == ""
    for uid, hyps in UTTERANCES:
        lines = gzip.decompress((out / f"{uid}.score.gz").read_bytes()).decode().splitlines()
        assert [line.split(maxsplit=3)[3] for line in lines] == hyps
    missing = cli("rescore", word_model, lists["srilm-dir"], "-q", expect=2)
    assert missing.stdout == "" and "--output DIR" in missing.stderr


def test_scores_are_eval_scores_of_the_same_lines_in_the_list_units(cli, word_model, lists, tmp_path):
    hyps = [hyp for _, utterance in UTTERANCES for hyp in utterance]
    expected = eval_log10(cli, word_model, hyps, tmp_path)
    # jsonl: natural logs
    got = [hyp for utterance in rescored(cli, word_model, lists["jsonl"], "--lm-weight", "0") for hyp in
           sorted(utterance["hyps"], key=lambda hyp: hyp["rank"])]
    assert [hyp["lm"] / LN10 for hyp in got] == pytest.approx(expected, abs=1e-4)
    assert got[2]["lm"] != got[0]["lm"]  # a model that tells hypotheses apart
    assert [hyp["tokens"] for hyp in got] == [len(text.split()) + 1 for text in hyps]
    assert [hyp["oov"] for hyp in got] == [0] * 6 + [2, 0, 0, 1]  # "where", "hana" (the model has cases); zzyzx
    # mikolov: log10, as Mikolov's rnnlm writes
    got = [hyp for utterance in rescored(cli, word_model, lists["mikolov"]) for hyp in
           sorted(utterance["hyps"], key=lambda hyp: hyp["rank"])]
    assert [hyp["lm"] for hyp in got] == pytest.approx(expected, abs=1e-4)
    assert {utterance["units"] for utterance in rescored(cli, word_model, lists["mikolov"])} == {"log10"}
    # --units overrides; the batch size changes nothing
    got = rescored(cli, word_model, lists["kaldi"], "--units", "log10", "--batch-size", "1")
    assert [hyp["lm"] for hyp in sorted(got[0]["hyps"], key=lambda hyp: hyp["rank"])] == \
        pytest.approx(expected[:4], abs=1e-4)


def test_utterance_context_carries_the_state_of_each_previous_first_hypothesis(cli, word_model, lists, tmp_path):
    got = rescored(cli, word_model, lists["kaldi"], "--context", "utterance", "--units", "log10")
    firsts = [hyps[0] for _, hyps in UTTERANCES]
    for u, (_, hyps) in enumerate(UTTERANCES):
        by_rank = sorted(got[u]["hyps"], key=lambda hyp: hyp["rank"])
        for rank, hyp in enumerate(hyps):
            stream = eval_log10(cli, word_model, firsts[:u] + [hyp], tmp_path, context="stream")
            assert by_rank[rank]["lm"] == pytest.approx(stream[-1], abs=1e-4)
    line = rescored(cli, word_model, lists["kaldi"], "--units", "log10")
    assert got[0]["hyps"] == line[0]["hyps"]  # the first utterance starts from a fresh state too
    assert got[1]["hyps"][0]["lm"] != pytest.approx(line[1]["hyps"][0]["lm"], abs=1e-3)


def test_totals_follow_the_documented_formula_and_ties_keep_the_list_order(cli, word_model, lists):
    weights = ["--lm-weight", "0.5", "--word-penalty", "-0.25", "--oov-penalty", "-3", "--rank-weight", "-0.125",
               "--score-weight", "2"]
    got = rescored(cli, word_model, lists["jsonl"], *weights)
    for utterance in got:
        totals = [hyp["total"] for hyp in utterance["hyps"]]
        assert totals == sorted(totals, reverse=True)
        for hyp in utterance["hyps"]:
            expected = 2 * hyp["scores"][0] + 0.5 * hyp["lm"] - 0.25 * hyp["words"] - 3 * hyp["oov"] - 0.125 * hyp[
                "rank"]
            assert hyp["total"] == pytest.approx(expected, abs=1e-9)
        assert utterance["best"] == utterance["hyps"][0]["text"]
    # all weights 0: every total ties, and the list's order stands
    flat = rescored(cli, word_model, lists["jsonl"], "--lm-weight", "0", "--score-weight", "0")
    assert [[hyp["rank"] for hyp in utterance["hyps"]] for utterance in flat] == [[0, 1, 2, 3], [0, 1, 2], [0, 1, 2]]
    # the model alone: utterance 1's duplicates tie, and the first of them comes first
    alone = rescored(cli, word_model, lists["kaldi"])[0]["hyps"]
    ranks = [hyp["rank"] for hyp in alone]
    assert ranks.index(0) < ranks.index(3)


def test_best_writes_kaldi_text(cli, word_model, lists):
    best = cli("rescore", word_model, lists["kaldi"], "--best", "-q").stdout.splitlines()
    by_json = rescored(cli, word_model, lists["kaldi"])
    assert best == [f"{utterance['id']} {utterance['best']}" for utterance in by_json]
    assert [line.split()[0] for line in best] == ["utt1", "utt2", "utt3"]


def test_report_counts_word_errors_with_jiwer(cli, word_model, lists, tmp_path):
    pytest.importorskip("jiwer")
    refs = tmp_path / "refs.txt"
    refs.write_text("".join(f"{uid} {text}\n" for uid, text in REFS.items()), encoding="utf-8")
    # the list's order alone (the model weighted out): first hypotheses all right; 21 reference words
    report = cli.json("rescore", word_model, lists["kaldi"], "--refs", refs, "--report", "--lm-weight", "0", "-q")
    rows = {row["name"]: row for row in report["wer"]}
    assert rows["first"]["errors"] == 0 and rows["first"]["ref_words"] == 21 and rows["oracle"]["errors"] == 0
    assert rows["rescored"]["errors"] == 0
    # a word penalty that favours length picks utterance 3's "... Ken . ." (one insertion) and nothing else longer
    report = cli.json("rescore", word_model, lists["kaldi"], "--refs", refs, "--report", "--lm-weight", "0",
                      "--word-penalty", "1", "-q")
    assert {row["name"]: row["errors"] for row in report["wer"]}["rescored"] == 1
    assert report["wer"][1]["wer"] == pytest.approx(100 / 21)
    # the jsonl refs are read without --refs; the table names the three rows
    table = cli("rescore", word_model, lists["jsonl"], "--report", "-q").stdout
    assert "oracle" in table and "first hypotheses" in table and "WER" in table


def test_tuning_finds_planted_weights(cli, word_model, tmp_path):
    """A synthetic list whose references win only near lm weight 0.5 and word penalty -1 (natural logs): the
    list's scores cancel those weights' totals except for the reference, which gets a small margin."""
    pytest.importorskip("jiwer")
    model, tokenizer, _ = load_for_inference(word_model)
    rng = random.Random(3)
    words = ["Yuki", "Sam", "Hana", "Ken", "gave", "the", "a", "letter", "book", "umbrella", "to", "near", "put",
             "found", "."]
    rows, lm_weight, word_penalty = [], 0.5, -1.0
    lines = []
    for _ in range(40):
        hyps = list(dict.fromkeys(" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(6)))
        lines.append(hyps)
    flat = [hyp for hyps in lines for hyp in hyps]
    token_lines = [enc.ids + [tokenizer.eos_id] for enc in tokenizer.encode_many(flat)]
    lm = [-float(nll.sum()) for nll in score_token_lines(model, token_lines, tokenizer.eos_id, "line")]
    index = 0
    for u, hyps in enumerate(lines):
        ref = rng.randrange(len(hyps))
        scores = []
        for h, hyp in enumerate(hyps):
            # other + 0.5 lm - 1 words = margin for the reference, -margin for the rest; other weights break it
            margin = 0.3 if h == ref else -0.3
            scores.append(margin - lm_weight * lm[index] - word_penalty * len(hyp.split()))
            index += 1
        rows.append({"id": f"u{u}", "hyps": hyps, "scores": scores, "ref": hyps[ref]})
    path = tmp_path / "planted.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tuned = cli.json("rescore", word_model, path, "--tune", "-q")
    assert {row["name"]: row["errors"] for row in tuned["wer"]}["rescored"] == 0
    assert tuned["weights"]["lm_weight"] == pytest.approx(lm_weight, rel=0.2)
    assert tuned["weights"]["word_penalty"] == pytest.approx(word_penalty, rel=0.2)
    assert "--lm-weight" in tuned["options"]
    # the tuned weights reproduce the tuned WER through --report, and the list's order alone does worse
    weights = tuned["weights"]
    report = cli.json("rescore", word_model, path, "--report", "--lm-weight", str(weights["lm_weight"]),
                      "--word-penalty", str(weights["word_penalty"]), "-q")
    assert report["wer"][1]["errors"] == 0 and report["wer"][0]["errors"] > 0
    # with -o the list goes to the file, reranked by the tuned weights: every reference first
    out = tmp_path / "reranked.jsonl"
    cli("rescore", word_model, path, "--tune", "-o", out, "-q")
    assert [json.loads(line)["hyps"][0] for line in out.read_text().splitlines()] == [row["ref"] for row in rows]
    # a weight given as an option stays as given
    held = cli.json("rescore", word_model, path, "--tune", "--lm-weight", "2", "-q")
    assert held["weights"]["lm_weight"] == 2 and "lm_weight" not in held["tuned"]
    # the table for people
    table = cli("rescore", word_model, path, "--tune", "-q").stdout
    assert "lm weight" in table and "best: --lm-weight" in table


def test_the_tree_scores_shared_prefixes_as_lines_alone(corpus, tmp_path):
    """Prefix sharing against plain line scoring, for a deep GRU and an LSTM, with random roots' states."""
    from rnnlm_cli.model import ModelConfig, RNNLanguageModel

    rng = random.Random(1)
    torch.manual_seed(2)
    for cell, layers in (("gru", 2), ("lstm", 1), ("rnn_tanh", 3)):
        model = RNNLanguageModel(ModelConfig(30, cell=cell, emb_size=8, hidden_size=10, layers=layers)).eval()
        stems = [[rng.randrange(2, 30) for _ in range(rng.randint(0, 6))] for _ in range(5)]
        lines = [stem + [rng.randrange(2, 30) for _ in range(rng.randint(0, 4))] + [1] for stem in stems
                 for _ in range(4)]
        expected = score_token_lines(model, lines, 1, "line", batch_size=3)
        got = score_prefix_tree(model, lines, [0] * len(lines), None, 1, batch_size=2)
        for want, have in zip(expected, got):
            assert torch.allclose(want, have, atol=1e-5)
        # two roots with their own states: each line as if read after its root's state
        roots = [index % 2 for index in range(len(lines))]
        states = model.init_hidden(2)
        states = tuple(torch.randn_like(s) for s in states) if isinstance(states, tuple) else torch.randn_like(states)
        got = score_prefix_tree(model, lines, roots, states, 1, batch_size=5)
        for line, root, have in zip(lines, roots, got):
            row = tuple(s[:, root : root + 1] for s in states) if isinstance(states, tuple) else \
                states[:, root : root + 1]
            with torch.inference_mode():
                features, _ = model.features(torch.tensor([[1, *line[:-1]]]), row)
                want = model.token_nll(features[0], torch.tensor(line))
            assert torch.allclose(want, have, atol=1e-5)


def test_ngram_mix_matches_eval(cli, word_model, lists, tmp_path):
    pytest.importorskip("kenlm")
    from tests.test_adapt import write_arpa

    hyps = [hyp for _, utterance in UTTERANCES for hyp in utterance]
    arpa = write_arpa(tmp_path / "lm.arpa", "\n".join(hyps[:5]))
    path = tmp_path / "hyps.txt"
    path.write_text("".join(hyp + "\n" for hyp in hyps), encoding="utf-8")
    result = cli("eval", word_model, path, "--context", "line", "--level", "line", "--format", "json",
                 "--ngram", arpa, "--ngram-weight", "0.3", "-q")
    expected = [json.loads(row)["log10_prob"] for row in result.stdout.splitlines()]
    got = [hyp for utterance in rescored(cli, word_model, lists["mikolov"], "--ngram", arpa, "--ngram-weight", "0.3")
           for hyp in sorted(utterance["hyps"], key=lambda hyp: hyp["rank"])]
    assert [hyp["lm"] for hyp in got] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("text", "args", "message"), [
    ("utt1-1 a b\nhello there\n", ["--format", "kaldi"], "line 2: 'hello' is not a Kaldi key"),
    ("utt1-1 a b\nutt1-2 a c\nhello there\n", [], "line 3's 'hello' is not"),
    ("utt1-1 a b\n{\"hyps\": [\"a\"]}\n", ["--format", "kaldi"], "line 2: '{\"hyps\":' is not a Kaldi key"),
    ("-1.5 -2 2 a b\n-1.5 abc 2 a b\n", [], "line 2: not an SRILM format 3 hypothesis"),
    ("-1.5 -2 2 a b\nutt1-1 a b\n", [], "line 2: not an SRILM"),
    ('{"hyps": ["a b"], "scores": [1]}\n{"hyps": ["a"], "scores": ["x"]}\n', [], "line 2: the score 'x' is not"),
    ('{"hyps": ["a b"]}\nutt1-1 a b\n', [], "line 2: not a JSON object"),
    ('{"hyps": ["a b"], "scores": [1, 2]}\n', [], '"scores" must be a list with one entry per hypothesis'),
    ("\n\n", [], "holds no hypotheses"),
])
def test_bad_lists_get_one_error_naming_the_file_and_line(cli, word_model, tmp_path, text, args, message):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    result = cli("rescore", word_model, path, *args, expect=1)
    assert result.stdout == ""
    assert message in result.stderr and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_usage_errors(cli, word_model, lists, tmp_path):
    cases = [
        (["--best", "--json"], "give one"),
        (["--score-weight", "1"], "--score-weight was given 1 times, and the list has 0 score columns"),
        (["--refs", tmp_path / "r.txt"], "--refs is read by --tune and --report"),
        (["--ngram-weight", "0.2"], "add --ngram MODEL"),
        (["--format", "srilm"], "not an SRILM format 3 hypothesis"),
    ]
    for args, message in cases:
        result = cli("rescore", word_model, lists["kaldi"], *args, "-q", expect=None)
        assert result.exit_code in (1, 2) and result.stdout == ""
        assert message in result.stderr, result.stderr
    assert cli("rescore", word_model, lists["kaldi"], "--best", "--json", expect=2).exit_code == 2
    no_refs = cli("rescore", word_model, lists["kaldi"], "--report", "-q", expect=1)
    assert "--refs FILE" in no_refs.stderr
    assert cli("rescore", word_model, tmp_path / "missing.txt", expect=1).stderr.count("no such file") == 1


def test_help_has_examples(cli):
    text = cli("rescore", "--help").stdout
    assert "Examples:" in text and "--tune" in text and "--best" in text
    assert "rescore" in cli("--help").stdout


def test_a_word_map_rewrites_what_the_model_reads_and_nothing_else(cli, word_model, tmp_path):
    from rnnlm_cli.nbest import WordMap

    rules = tmp_path / "rules.map"
    rules.write_text("# comment\nmister Sam\nfifty N+\nhundred N+   # trailing comment\numm\ngave gave+\n",
                     encoding="utf-8")
    word_map = WordMap(str(rules))
    assert word_map.apply("mister umm fifty hundred fifty umm fifty") == "Sam N N"
    assert word_map.apply("gave gave gave the") == "gave the"
    listed = tmp_path / "list.kaldi"
    listed.write_text("u-1 Yuki gave the umbrella to mister .\nu-2 Yuki gave umm the umbrella to Sam .\n",
                      encoding="utf-8")
    got = sorted(rescored(cli, word_model, listed, "--map", rules, "--units", "log10")[0]["hyps"],
                 key=lambda hyp: hyp["rank"])
    expected = eval_log10(cli, word_model, ["Yuki gave the umbrella to Sam ."] * 2, tmp_path)
    assert [hyp["lm"] for hyp in got] == pytest.approx(expected, abs=1e-4)  # both read as the same sentence
    assert [hyp["text"] for hyp in got] == ["Yuki gave the umbrella to mister .", "Yuki gave umm the umbrella to Sam ."]
    assert [hyp["words"] for hyp in got] == [7, 8]  # the list's words
    assert [hyp["oov"] for hyp in got] == [0, 0]  # counted after the map ("mister" alone would be one)
    assert cli("rescore", word_model, listed, "--map", rules, "--best", "-q").stdout.splitlines()[0] == \
        "u Yuki gave the umbrella to mister ."
    # the shipped map for PTB models reads
    shipped = WordMap(str(Path(__file__).resolve().parent.parent / "docs" / "maps" / "ptb-spoken.map"))
    assert shipped.apply("mister smith paid nineteen eighty-seven dollars for five hundred shares") == \
        "mr. smith paid N dollars for five N shares"
    bad = tmp_path / "bad.map"
    bad.write_text("a b\na c\n", encoding="utf-8")
    result = cli("rescore", word_model, listed, "--map", bad, expect=1)
    assert "bad.map, line 2: a second rule for 'a'" in result.stderr and result.stdout == ""


def test_kaldi_costs_become_score_columns(cli, word_model, lists, tmp_path):
    keys = [f"{uid}-{rank}" for uid, hyps in UTTERANCES for rank in range(1, len(hyps) + 1)]
    ac_cost, lm_cost = tmp_path / "ac_cost", tmp_path / "lm_cost"
    ac_cost.write_text("".join(f"{key} {100 + 7 * index}\n" for index, key in enumerate(reversed(keys))))
    lm_cost.write_text("".join(f"{key} {20.5 + index}\n" for index, key in enumerate(keys)))
    got = rescored(cli, word_model, lists["kaldi"], "--costs", ac_cost, "--costs", lm_cost, "--score-weight", "0.1",
                   "--score-weight", "0.5", "--lm-weight", "0.25")
    index = {key: position for position, key in enumerate(keys)}
    for utterance in got:
        for hyp in utterance["hyps"]:
            position = index[f"{utterance['id']}-{hyp['rank'] + 1}"]
            ac, lm = 100 + 7 * (len(keys) - 1 - position), 20.5 + position
            assert hyp["scores"] == [-ac, -lm]
            assert hyp["total"] == pytest.approx(-0.1 * ac - 0.5 * lm + 0.25 * hyp["lm"], abs=1e-9)
    lm_cost.write_text("utt1-1 3\n")
    result = cli("rescore", word_model, lists["kaldi"], "--costs", lm_cost, expect=1)
    assert "lm_cost: no cost for utt1-2 (line 2 of the list)" in result.stderr and result.stdout == ""
    lm_cost.write_text("utt1-1 x\n")
    assert "lm_cost, line 1: not a Kaldi cost line" in cli("rescore", word_model, lists["kaldi"], "--costs", lm_cost,
                                                          expect=1).stderr
    assert "--costs adds Kaldi" in cli("rescore", word_model, lists["jsonl"], "--costs", ac_cost, expect=1).stderr
