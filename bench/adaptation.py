"""Adapted scores on a benchmark corpus: test ppl static / cache / dynamic / n-gram / all, tuned on valid; and the cost.

    python bench/adaptation.py CKPT --corpus ptb --lmplz PATH/TO/lmplz --name small
    python bench/adaptation.py CKPT --corpus wikitext-2 --only cache --name wt2
    python bench/adaptation.py CKPT --corpus ptb --ngram kn5.arpa --dry-run      # prints, writes nothing

For each adaptation (and for all of them together) `rnnlm tune` chooses the settings on the corpus's valid.txt,
then `rnnlm eval` scores test.txt with them (stream context, fp32, the protocol of the published figures). The
n-gram is a modified Kneser-Ney 5-gram of train.txt estimated by KenLM's lmplz (built from the kenlm source
package; `--lmplz`), or the ARPA / binary file given with `--ngram`. lmplz refuses the literal `<unk>` of PTB and
WikiText-2, so it is replaced by the plain word UNK in the n-gram's training text and in the texts scored with
the n-gram; the RNN scores UNK as its `<unk>` either way, so those runs' ppl is comparable with the others
(their OOV counts are not).

Cost: each mode's `rnnlm eval` library call on test.txt, timed in this process after a warm-up, alternated
with static runs (best of --repeats), as tokens per second; the rms rule's gradient statistics (computed once
per evaluation) are included in dynamic's time.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED_DATA, machine, publish, run_rnnlm

from rnnlm_cli.checkpoint import load_checkpoint
from rnnlm_cli.config import CacheSettings, DynamicSettings, EvalConfig, NgramSettings
from rnnlm_cli.jobs.evaluate import evaluate

MODES = ("cache", "dynamic", "ngram")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--corpus", default="ptb", help="a folder of ../shared/data with train/valid/test.txt")
    parser.add_argument("--name", default=None, help="names the section (adaptation-NAME); default: the checkpoint")
    parser.add_argument("--lmplz", type=Path, default=None, help="KenLM's lmplz, to estimate the 5-gram")
    parser.add_argument("--ngram", type=Path, default=None, help="an n-gram model of train.txt (instead of lmplz)")
    parser.add_argument("--only", nargs="+", choices=MODES, default=None, help="these adaptations only")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each mode (best counts)")
    parser.add_argument("--no-timing", action="store_true", help="ppl only (the CPU is shared with other work)")
    parser.add_argument("--timing-only", action="store_true",
                        help="time the settings an earlier --no-timing run stored, and write the whole section")
    parser.add_argument("--dry-run", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args()

    corpus = SHARED_DATA / args.corpus
    work = ROOT / "checkpoints" / f"adaptation-{args.corpus}"
    work.mkdir(parents=True, exist_ok=True)
    modes = list(args.only or MODES)
    ngram = args.ngram
    if "ngram" in modes and ngram is None:
        if args.lmplz is None:
            sys.exit("the n-gram needs --lmplz PATH (KenLM's estimator) or --ngram MODEL; or leave it out with --only")
        ngram = estimate_kn5(args.lmplz, corpus, work)
    texts = {split: corpus / f"{split}.txt" for split in ("valid", "test")}
    unk_texts = {split: unk_mapped(path, work) for split, path in texts.items()} if "ngram" in modes else {}

    name = args.name or args.checkpoint.stem
    stored = work / f"{name}.json"  # what tuning chose and the test ppl, for a later --timing-only run
    if args.timing_only:
        saved = json.loads(stored.read_text(encoding="utf-8"))
        tuned, results = saved["tuned"], saved["results"]
        settings = {mode: report_["best"] for mode, report_ in tuned.items()}
        timing = time_modes(args.checkpoint, texts["test"], unk_texts.get("test"), settings, args.repeats)
        publish(f"adaptation-{name}", report(args, name, ngram, tuned, results, timing), args.dry_run)
        return
    settings: dict[str, dict] = {}
    tuned: dict[str, dict] = {}
    for mode in [*modes, *(["all"] if len(modes) > 1 else [])]:
        options = ["--cache"] if mode in ("cache", "all") and "cache" in modes else []
        if mode == "dynamic":
            options += ["--dynamic"]
        elif mode == "all" and "dynamic" in modes:
            # tune's first stage is dynamic evaluation alone, so its answer is the dynamic row's: not searched twice
            chosen = settings["dynamic"].get("dynamic")
            options += ["--dynamic", "--dynamic-lr", str(chosen["lr"]), "--dynamic-decay", str(chosen["decay"]),
                        "--dynamic-segment", str(chosen["segment"])] if chosen else []
        options += ["--ngram", str(ngram)] if mode in ("ngram", "all") and "ngram" in modes else []
        valid = unk_texts["valid"] if "--ngram" in options else texts["valid"]
        print(f"tuning {mode} on {valid} ...", file=sys.stderr)
        seconds, stdout = run_rnnlm("tune", args.checkpoint, valid, *options, "--json", "-q")
        tuned[mode] = {**json.loads(stdout), "seconds": seconds}
        settings[mode] = tuned[mode]["best"]

    results = {"static": test_ppl(args.checkpoint, texts["test"], {})}
    for mode, best in settings.items():
        text = unk_texts["test"] if "ngram" in best else texts["test"]
        results[mode] = test_ppl(args.checkpoint, text, best)
    stored.write_text(json.dumps({"tuned": tuned, "results": results}, indent=1), encoding="utf-8")
    timing = {} if args.no_timing else time_modes(args.checkpoint, texts["test"], unk_texts.get("test"), settings,
                                                  args.repeats)
    publish(f"adaptation-{name}", report(args, name, ngram, tuned, results, timing), args.dry_run)


def estimate_kn5(lmplz: Path, corpus: Path, work: Path) -> Path:
    """A modified Kneser-Ney 5-gram of train.txt (lmplz's default discounting), as ARPA, made once."""
    arpa = work / "train.kn5.arpa"
    if not arpa.exists():
        train = unk_mapped(corpus / "train.txt", work)
        with open(train, "rb") as source, open(f"{arpa}.part", "wb") as sink:
            subprocess.run([str(lmplz), "-o", "5", "-S", "20%", "-T", str(work)], stdin=source, stdout=sink,
                           stderr=subprocess.DEVNULL, check=True)
        Path(f"{arpa}.part").rename(arpa)
    return arpa


def unk_mapped(path: Path, work: Path) -> Path:
    """``path`` with each literal <unk> word written UNK (lmplz refuses <unk> in its input)."""
    out = work / f"{path.stem}.unk.txt"
    if not out.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        out.write_text("".join(" ".join("UNK" if word == "<unk>" else word for word in line.split(" ")) + "\n"
                               for line in lines), encoding="utf-8")
    return out


def eval_config(checkpoint: Path, text: Path, best: dict) -> EvalConfig:
    cache = best.get("cache")
    dynamic = best.get("dynamic")
    ngram = best.get("ngram")
    return EvalConfig(
        checkpoint=str(checkpoint), inputs=[str(text)],
        cache=CacheSettings(cache["window"], cache["theta"], cache["lambda"]) if cache else None,
        dynamic=DynamicSettings(dynamic["rule"], dynamic["lr"], dynamic["decay"], dynamic["segment"])
        if dynamic else None,
        ngram=NgramSettings(ngram["model"], ngram["weight"]) if ngram else None)


def test_ppl(checkpoint: Path, text: Path, best: dict) -> float:
    return evaluate(eval_config(checkpoint, text, best)).total.ppl


def time_modes(checkpoint: Path, test: Path, unk_test: Path | None, settings: dict[str, dict],
               repeats: int) -> dict[str, dict]:
    """Seconds of the eval library call per mode (best of ``repeats``), each run right after a static one."""
    timings: dict[str, list[float]] = {"static": []}
    test_ppl(checkpoint, test, {})  # warm-up: file cache, first-touch allocations
    tokens = 0
    for _ in range(repeats):
        for mode, best in settings.items():
            for name, chosen in (("static", {}), (mode, best)):
                config = eval_config(checkpoint, unk_test if "ngram" in chosen else test, chosen)
                start = time.perf_counter()
                tokens = evaluate(config).total.tokens
                timings.setdefault(name, []).append(time.perf_counter() - start)
    return {name: {"seconds": min(values), "tokens_per_second": tokens / min(values)}
            for name, values in timings.items()}


def command_line(args) -> str:
    """This run's arguments, the checkpoint's path written CKPT and --timing-only left out (it only splits a run)."""
    return " ".join("CKPT" if arg == str(args.checkpoint) else arg for arg in sys.argv[1:] if arg != "--timing-only")


def describe(checkpoint: Path) -> str:
    """The model and how it was trained, from the checkpoint itself."""
    loaded = load_checkpoint(checkpoint)
    model, train = loaded.model_config, loaded.train
    settings = train.get("config", {})
    recipe = f"preset {settings['preset']}" if settings.get("preset") else "no preset"
    extras = [f"{settings['softmax']} softmax"] if settings.get("softmax") == "adaptive" else []
    best = train.get("best_valid_loss")
    return (f"a {model.layers} x {model.hidden_size} {model.cell} ({recipe}{', ' if extras else ''}"
            f"{', '.join(extras)}), {train.get('epoch')} epochs, best valid ppl in training "
            f"{math.exp(best):.2f}" if best is not None else f"a {model.layers} x {model.hidden_size} {model.cell}")


def report(args, name: str, ngram: Path | None, tuned: dict, results: dict, timing: dict) -> str:
    static = results["static"]
    rows = ["| mode | settings (tuned on valid.txt) | valid ppl | test ppl | vs static |" + (
        " test tok/s | time vs static |" if timing else ""), "|---|---|---|---|---|" + ("---|---|" if timing else "")]
    static_speed = timing.get("static", {}).get("tokens_per_second")
    valid_static = next(iter(tuned.values()))["static_ppl"]
    for mode in ["static", *tuned]:
        valid = valid_static if mode == "static" else tuned[mode]["ppl"]
        options = "" if mode == "static" else (tuned[mode]["eval_options"] or "(nothing lowered ppl)")
        if ngram is not None:
            options = options.replace(str(ngram), "KN5")
        test = results[mode]
        row = f"| {mode} | {options} | {valid:.2f} | {test:.2f} | {100 * (test / static - 1):+.1f}% |"
        if timing:
            speed = timing.get(mode, {}).get("tokens_per_second")
            row += f" {speed:,.0f} | {static_speed / speed:.2f}x |" if speed else " | |"
        rows.append(row)
    ngram_line = ""
    if ngram is not None:
        ngram_line = (f"\nThe n-gram (KN5 above): {ngram.name}, a modified Kneser-Ney 5-gram of train.txt by KenLM's "
                      f"lmplz (`<unk>` written UNK).")
    return f"""## Adapted scores: {name} on {args.corpus}

`python bench/adaptation.py {command_line(args)}` on {machine()}; {time.strftime('%Y-%m-%d')}.
The checkpoint: {describe(args.checkpoint)}.
Settings chosen by `rnnlm tune` on valid.txt (each adaptation alone; "all": tuned together, in the order
dynamic, cache, n-gram), test ppl from `rnnlm eval` in stream context, fp32.{ngram_line}
Timing: the eval library call on test.txt, best of {args.repeats}, alternated with static runs; dynamic includes
the rms rule's gradient statistics (computed at the start of each evaluation).

{chr(10).join(rows)}
"""


if __name__ == "__main__":
    main()
