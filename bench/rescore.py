"""N-best rescoring on the public ASR lists of ../shared/data/nbest: speed against `rnnlm eval`, and WER.

    python bench/rescore.py speed CKPT                          # hypotheses/s: rescore vs eval --level line
    python bench/rescore.py wer CKPT --set chime4 [--ngram kn5.bin] [--context utterance] [--label NAME]
    python bench/rescore.py atis-folds                          # in-domain ATIS models, 3-fold rotation
    python bench/rescore.py publish                             # writes the section of docs/benchmarks.md

speed: every hypothesis of chime4.json and atis.json as one line each; `rnnlm eval CKPT hyps.txt --context line
--level line` against `rnnlm rescore CKPT list.jsonl --context line` (and --context utterance) on the same
hypotheses, whole processes (start-up and model loading included, the same for both), run one after another and
never at once, best of --repeats, fp32 and bf16.

wer: the list split into two halves (even and odd utterances); the weights are tuned (`rnnlm rescore --tune`) on
one half and the WER measured (`--report`) with them on the other, both ways; the errors of the two measured
halves are summed, so every utterance is counted once, by weights that never saw it.

atis-folds: ATIS has no training text of its own here, and the PTB model knows little of air travel. So: the
utterances in three folds by index; for each rotation a small LSTM is trained on the references of one fold
(early stopping on the next), the weights are tuned on the next fold and the WER measured on the third. The
three measured folds cover every utterance once; no model or weight saw the utterances it is measured on.

Results go to checkpoints/rescore/*.json; `publish` turns them into the docs/benchmarks.md section.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED_DATA, machine, publish, run_rnnlm, timed

WORK = ROOT / "checkpoints" / "rescore"
SETS = ("chime4", "atis")


def lists() -> dict[str, Path]:
    """Each public list as JSON Lines (`id`, `hyps`, `scores` where the set has them, `ref`), written once."""
    WORK.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in SETS:
        path = paths[name] = WORK / f"{name}.jsonl"
        if path.exists():
            continue
        rows = json.loads((SHARED_DATA / "nbest" / f"{name}.json").read_text(encoding="utf-8"))
        with path.open("w", encoding="utf-8") as out:
            for index, row in enumerate(rows):
                record = {"id": row.get("id", f"{name}-{index:04d}"), "hyps": row["input"], "ref": row["output"]}
                if "am_score" in row:
                    record["scores"] = row["am_score"]
                out.write(json.dumps(record) + "\n")
    return paths


def split(path: Path, parts: int) -> list[Path]:
    """The list's utterances dealt into ``parts`` files by index (utterance i into part i mod parts)."""
    rows = path.read_text(encoding="utf-8").splitlines()
    out = []
    for part in range(parts):
        target = WORK / f"{path.stem}.{part}of{parts}.jsonl"
        target.write_text("".join(row + "\n" for row in rows[part::parts]), encoding="utf-8")
        out.append(target)
    return out


def speed(args) -> None:
    paths = lists()
    hyps = [hyp for name in SETS for line in paths[name].read_text().splitlines() for hyp in json.loads(line)["hyps"]]
    text = WORK / "all-hyps.txt"
    text.write_text("".join(hyp + "\n" for hyp in hyps), encoding="utf-8")
    both = WORK / "all.jsonl"
    both.write_text("".join(json.dumps({"id": row["id"], "hyps": row["hyps"]}) + "\n" for name in SETS
                            for row in map(json.loads, paths[name].read_text().splitlines())), encoding="utf-8")
    runs = {
        "eval --context line --level line": ["eval", args.checkpoint, text, "--context", "line", "--level", "line"],
        "rescore --context line": ["rescore", args.checkpoint, both, "--context", "line", "--json"],
        "rescore --context utterance": ["rescore", args.checkpoint, both, "--context", "utterance", "--json"],
    }
    results = {"machine": machine(), "checkpoint": str(args.checkpoint), "hypotheses": len(hyps)}
    results["runs"] = best_times({name: lambda precision, command=command: run_rnnlm(
        *command, "--precision", precision, "-q")[0] for name, command in runs.items()}, len(hyps), args.repeats)
    # the scoring alone: the library calls behind both commands, in this process (start-up and import excluded)
    from rnnlm_cli.config import EvalConfig, RescoreConfig
    from rnnlm_cli.jobs.evaluate import iter_line_scores
    from rnnlm_cli.jobs.rescore import rescore

    calls = {
        "eval --context line --level line": lambda precision: sum(1 for _ in iter_line_scores(EvalConfig(
            str(args.checkpoint), [str(text)], context="line", precision=precision))),
        "rescore --context line": lambda precision: rescore(RescoreConfig(str(args.checkpoint), str(both),
                                                                          precision=precision)),
        "rescore --context utterance": lambda precision: rescore(RescoreConfig(
            str(args.checkpoint), str(both), context="utterance", precision=precision)),
    }
    results["in_process"] = best_times({name: lambda precision, call=call: timed(call, precision)[0]
                                        for name, call in calls.items()}, len(hyps), args.repeats)
    (WORK / "speed.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


def best_times(runs: dict, hypotheses: int, repeats: int) -> list[dict]:
    """Each run (a function of the precision giving its seconds) ``repeats`` times in fp32 and in bf16, the runs
    one after another and never at once; the best time of each."""
    rows = []
    for precision in ("fp32", "bf16"):
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(run(precision))
        for name in runs:
            best = min(times[name])
            rows.append({"command": name, "precision": precision, "seconds": best,
                         "hyps_per_second": hypotheses / best, "all_seconds": times[name]})
            print(f"{precision} {name}: {best:.2f} s, {hypotheses / best:,.0f} hyp/s", flush=True)
    return rows


def tune_then_report(checkpoint: Path, tune_on: Path, measure_on: Path, extra: list[str]) -> dict:
    _, out = run_rnnlm("rescore", checkpoint, tune_on, "--tune", "--json", "-q", *extra)
    tuned = json.loads(out)
    weights = tuned["weights"]
    options = ["--lm-weight", weights["lm_weight"], "--word-penalty", weights["word_penalty"],
               "--oov-penalty", weights["oov_penalty"], "--rank-weight", weights["rank_weight"]]
    _, out = run_rnnlm("rescore", checkpoint, measure_on, "--report", "--json", "-q", *extra, *map(str, options))
    report = json.loads(out)
    return {"tuned_on": tune_on.name, "measured_on": measure_on.name, "weights": weights,
            "tuned_wer": {row["name"]: row["wer"] for row in tuned["wer"]}, "wer": report["wer"],
            "oov_rate": report["oov_rate"]}


def summed(measured: list[dict]) -> dict:
    rows = {}
    for name in ("first", "rescored", "oracle"):
        errors = sum(next(row["errors"] for row in part["wer"] if row["name"] == name) for part in measured)
        words = sum(next(row["ref_words"] for row in part["wer"] if row["name"] == name) for part in measured)
        rows[name] = {"errors": errors, "ref_words": words, "wer": 100 * errors / words}
    return rows


def wer(args) -> None:
    path = lists()[args.set]
    halves = split(path, 2)
    extra = ["--context", args.context] + (["--ngram", str(args.ngram), "--ngram-weight", str(args.ngram_weight)]
                                           if args.ngram else []) + list(args.options or [])
    measured = [tune_then_report(args.checkpoint, halves[0], halves[1], extra),
                tune_then_report(args.checkpoint, halves[1], halves[0], extra)]
    _, out = run_rnnlm("rescore", args.checkpoint, path, "--tune", "--json", "-q", *extra)
    whole = json.loads(out)
    label = args.label or f"{args.set}-{Path(args.checkpoint).stem}-{args.context}" + ("-ngram" if args.ngram else "")
    result = {"set": args.set, "label": label, "checkpoint": str(args.checkpoint), "context": args.context,
              "options": extra, "machine": machine(), "halves": measured, "cross_validated": summed(measured),
              "tuned_on_all": {row["name"]: row["wer"] for row in whole["wer"]}, "weights_on_all": whole["weights"],
              "oov_rate": whole["oov_rate"]}
    (WORK / f"wer-{label}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    cv = result["cross_validated"]
    print(f"{label}: first {cv['first']['wer']:.2f}, rescored {cv['rescored']['wer']:.2f} (tuned on the other "
          f"half), oracle {cv['oracle']['wer']:.2f}; tuned on all {result['tuned_on_all']['rescored']:.2f}")


def atis_folds(args) -> None:
    path = lists()["atis"]
    folds = split(path, 3)
    refs = []
    for fold in folds:
        target = fold.with_suffix(".refs.txt")
        target.write_text("".join(json.loads(row)["ref"] + "\n" for row in fold.read_text().splitlines()),
                          encoding="utf-8")
        refs.append(target)
    measured, models = [], []
    for rotation in range(3):
        train, tune_on, measure_on = rotation, (rotation + 1) % 3, (rotation + 2) % 3
        data, model = WORK / f"atis-fold{train}-data", WORK / f"atis-fold{train}.pt"
        shutil.rmtree(data, ignore_errors=True)  # a fresh dataset and model each run
        for old in WORK.glob(f"atis-fold{train}.*"):
            old.unlink()
        run_rnnlm("tokenize", refs[train], "--valid", refs[tune_on], "--out", data, "--min-freq", "1", "-q")
        run_rnnlm("train", data, "--out", model, "--cell", "lstm", "--layers", "1", "--emb-size", "128",
                  "--hidden-size", "128", "--dropout", "0.5", "--epochs", str(args.epochs), "--optimizer", "adam",
                  "--lr", "0.003", "--batch-size", "16", "--bptt", "20", "--seed", "1", "-q")
        _, out = run_rnnlm("info", model, "--json")
        models.append({"fold": train, "valid_ppl": json.loads(out).get("best_valid_ppl")})
        measured.append(tune_then_report(model, folds[tune_on], folds[measure_on], ["--context", args.context]))
        print(f"rotation {rotation}: {measured[-1]['wer']}", flush=True)
    result = {"set": "atis", "label": f"atis-folds-{args.context}", "machine": machine(), "context": args.context,
              "models": models, "folds": measured, "cross_validated": summed(measured),
              "oov_rate": sum(part["oov_rate"] for part in measured) / len(measured)}
    (WORK / f"wer-atis-folds-{args.context}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    cv = result["cross_validated"]
    print(f"atis folds: first {cv['first']['wer']:.2f}, rescored {cv['rescored']['wer']:.2f}, "
          f"oracle {cv['oracle']['wer']:.2f}")


def publish_section(args) -> None:
    lines = ["## Rescoring n-best lists (`bench/rescore.py`)", ""]
    speed_file = WORK / "speed.json"
    if speed_file.exists():
        results = json.loads(speed_file.read_text())
        lines += [f"Machine: {results['machine']}.", "",
                  f"Speed: the {results['hypotheses']:,} hypotheses of chime4 and atis (5-best each) with "
                  f"`{Path(results['checkpoint']).name}`, each command a whole process (start-up and loading "
                  f"included), best of {len(results['runs'][0]['all_seconds'])} runs, one at a time.", "",
                  "| measured | command | seconds | hypotheses/s | vs eval |", "|---|---|---:|---:|---:|"]
        for kind, key in (("whole process", "runs"), ("scoring only", "in_process")):
            for precision in ("fp32", "bf16"):
                runs = [run for run in results.get(key, []) if run["precision"] == precision]
                for run in runs:
                    lines.append(f"| {kind}, {precision} | `{run['command']}` | {run['seconds']:.2f} | "
                                 f"{run['hyps_per_second']:,.0f} | "
                                 f"{run['hyps_per_second'] / runs[0]['hyps_per_second']:.2f}x |")
        lines += ["", "Scoring only: the library calls behind the commands (`evaluate.iter_line_scores`, "
                  "`rescore.rescore`) timed in one process after the whole-process runs, start-up and imports "
                  "excluded (reading, tokenizing and loading the model included).", ""]
    rows = []
    for file in sorted(WORK.glob("wer-*.json")):
        result = json.loads(file.read_text())
        cv = result["cross_validated"]
        in_sample = f"{result['tuned_on_all']['rescored']:.2f}" if "tuned_on_all" in result else "-"
        rows.append(f"| {result['set']} | {result['label']} | {result['context']} | "
                    f"{100 * result.get('oov_rate', float('nan')):.1f} | {cv['first']['wer']:.2f} | "
                    f"**{cv['rescored']['wer']:.2f}** | {cv['oracle']['wer']:.2f} | "
                    f"{in_sample} |")
    if rows:
        lines += ["WER (%): weights tuned on other utterances than those measured (see the script's docstring); "
                  "'tuned on all' is the in-sample figure, for comparison only.", "",
                  "| set | run | context | OOV % | first | rescored (held out) | oracle | tuned on all |",
                  "|---|---|---|---:|---:|---:|---:|---:|", *rows, ""]
    collected = {"speed": json.loads(speed_file.read_text()) if speed_file.exists() else None,
                 "wer": [json.loads(file.read_text()) for file in sorted(WORK.glob("wer-*.json"))]}
    if not args.dry_run:
        (ROOT / "bench" / "results" / "rescore.json").write_text(json.dumps(collected, indent=2) + "\n",
                                                                 encoding="utf-8")
    publish("rescore", "\n".join(lines), args.dry_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("speed")
    run.add_argument("checkpoint", type=Path)
    run.add_argument("--repeats", type=int, default=3)
    run = commands.add_parser("wer")
    run.add_argument("checkpoint", type=Path)
    run.add_argument("--set", choices=SETS, required=True)
    run.add_argument("--context", default="line", choices=("line", "utterance"))
    run.add_argument("--ngram", type=Path, default=None)
    run.add_argument("--ngram-weight", type=float, default=0.35)
    run.add_argument("--label", default=None)
    run.add_argument("--options", nargs=argparse.REMAINDER, help="more rnnlm rescore options, last")
    run = commands.add_parser("atis-folds")
    run.add_argument("--context", default="line", choices=("line", "utterance"))
    run.add_argument("--epochs", type=int, default=60, help="at most (training stops early on a plateau)")
    run = commands.add_parser("publish")
    run.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    {"speed": speed, "wer": wer, "atis-folds": atis_folds, "publish": publish_section}[args.command](args)


if __name__ == "__main__":
    main()
