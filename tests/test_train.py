"""`rnnlm train`: learning, checkpoints, resume, time budget, held-out validation."""

from __future__ import annotations

import itertools
import json
import math
import re
import time

import pytest
import torch
from conftest import TINY_MODEL

from rnnlm_cli.checkpoint import load_checkpoint
from rnnlm_cli.data import Dataset


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_each_cell_lowers_validation_loss(cli, word_dataset, tmp_path, cell):
    vocab = Dataset(word_dataset).tokenizer.vocab_size
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", "--cell", cell, *TINY_MODEL, "--epochs", "4",
                 "--optimizer", "adam", "--lr", "0.01", "--json")
    summary = json.loads(result.stdout)
    valid = [record["valid_ppl"] for record in summary["history"]]
    assert len(valid) == 4 and summary["stop_reason"] == "completed"
    assert valid[-1] < valid[0]
    # an untrained model is close to uniform (ppl ~ vocabulary size); training must beat that by far
    assert summary["best_valid_ppl"] < vocab / 4
    assert summary["best_valid_ppl"] == pytest.approx(min(valid))
    assert re.search(r"^epoch +train ppl +valid ppl", result.stderr, re.MULTILINE)  # the header of the epoch lines
    assert re.search(r"^4/4 +\d", result.stderr, re.MULTILINE)
    assert load_checkpoint(tmp_path / "m.pt").model_config.cell == cell


def test_best_and_last_checkpoints(cli, word_dataset, tmp_path):
    out = tmp_path / "run.pt"
    summary = cli.json("train", word_dataset, "--out", out, *TINY_MODEL, "--epochs", "2", "-q")
    best, last = load_checkpoint(out), load_checkpoint(tmp_path / "run.last.pt")
    assert summary["last_checkpoint"] == str(tmp_path / "run.last.pt")
    assert not best.resumable and last.resumable
    assert best.train["epoch"] == summary["best_epoch"] and last.train["epoch"] == 2
    assert best.train["best_valid_loss"] == pytest.approx(min(r["valid_loss"] for r in summary["history"]))
    # the best checkpoint evaluates to the validation ppl training reported for it, in the training precision
    valid_text = Dataset(word_dataset).split_info("valid")["source"]
    total = cli.json("eval", out, valid_text, "--precision", summary["precision"])["total"]
    assert total["ppl"] == pytest.approx(summary["best_valid_ppl"], rel=1e-5)


def _weights(path):
    return load_checkpoint(path).model_state


def test_resume_at_an_epoch_boundary_is_exact(cli, word_dataset, tmp_path):
    common = [*TINY_MODEL, "--dropout", "0.3", "--seed", "7", "-q"]
    straight = cli.json("train", word_dataset, "--out", tmp_path / "a.pt", "--epochs", "3", *common)
    cli("train", word_dataset, "--out", tmp_path / "b.pt", "--epochs", "1", *common)
    resumed = cli.json("train", word_dataset, "--resume", tmp_path / "b.pt", "--epochs", "3", "-q")
    assert [r["valid_loss"] for r in resumed["history"]] == [r["valid_loss"] for r in straight["history"]]
    for name, tensor in _weights(tmp_path / "a.last.pt").items():
        assert torch.equal(tensor, _weights(tmp_path / "b.last.pt")[name]), name


def test_max_time_stops_mid_epoch_and_resume_finishes_exactly(cli, word_dataset, tmp_path):
    common = [*TINY_MODEL, "--dropout", "0.3", "--seed", "3", "--epochs", "2"]
    straight = cli.json("train", word_dataset, "--out", tmp_path / "a.pt", *common, "-q")
    stopped = cli("train", word_dataset, "--out", tmp_path / "b.pt", *common, "--max-time", "0.001", "--json")
    summary = json.loads(stopped.stdout)
    assert summary["stop_reason"] == "max_time" and summary["epochs"] == 0
    assert summary["history"][0]["complete"] is False
    assert f"--resume {tmp_path / 'b.pt'}" in stopped.stderr
    assert load_checkpoint(tmp_path / "b.pt").model_config.hidden_size == 24  # best so far is loadable
    resumed = cli.json("train", word_dataset, "--resume", tmp_path / "b.pt", "-q")
    assert resumed["epochs"] == 2 and resumed["stop_reason"] == "completed"
    complete = [r["valid_loss"] for r in resumed["history"] if r["complete"]]
    assert complete == [r["valid_loss"] for r in straight["history"]]
    for name, tensor in _weights(tmp_path / "a.last.pt").items():
        assert torch.equal(tensor, _weights(tmp_path / "b.last.pt")[name]), name
    # time counts over the whole run: the resumed process adds its own to the first one's (up to its last save)
    assert [r["process"] for r in resumed["history"]] == [1] + [2] * (len(resumed["history"]) - 1)
    first = summary["history"][0]["elapsed_seconds"]
    assert summary["elapsed_seconds"] == pytest.approx(summary["process_seconds"], abs=0.05)
    earlier = resumed["elapsed_seconds"] - resumed["process_seconds"]
    assert first <= earlier <= summary["process_seconds"]
    clocks = [r["elapsed_seconds"] for r in resumed["history"]]
    assert clocks == sorted(clocks) and clocks[1] > earlier


class _ShiftedClock:
    """`time` for rnnlm_cli.jobs.train.budget with a clock that can be moved forward: validations that take 10 s,
    for nothing.
    ``real=False`` stops the real time from counting, so that only the moves do: a test of the budget's arithmetic
    then passes however busy the machine is."""

    def __init__(self, real: bool = True) -> None:
        self.offset = 0.0
        self.real = real

    def monotonic(self) -> float:
        return (time.monotonic() if self.real else 0.0) + self.offset

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_max_time_leaves_room_for_the_last_validation(cli, word_dataset, tmp_path, monkeypatch):
    """The budget covers the validation and saves after the stop: training stops once less time is left than the
    last validation took, and a budget spent during an epoch's validation ends the run there, with no step more."""
    from rnnlm_cli.jobs.train import budget, validation

    clock = _ShiftedClock()
    real_loss = validation.Validator.loss

    def slow_validation(self):
        clock.offset += 10.0
        return real_loss(self)

    monkeypatch.setattr(budget, "time", clock)
    monkeypatch.setattr(validation.Validator, "loss", slow_validation)
    # epoch 1 and its validation end after about 10 s, epoch 2's after 20 s: 5 s left, less than a validation
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "5", "--max-time", "25",
                 "--json")
    summary = json.loads(result.stdout)
    assert summary["stop_reason"] == "max_time" and summary["epochs"] == 2
    assert [r["complete"] for r in summary["history"]] == [True, True]
    assert 20 < summary["process_seconds"] <= 25
    assert load_checkpoint(tmp_path / "m.last.pt").train["state"]["batch"] == 0  # resumes at epoch 3's start
    assert re.search(r"stopped at the --max-time budget \(allowing 10\.\d s of it for validating and saving\)",
                     result.stderr)


def test_max_time_estimates_the_first_validation_from_the_steps_so_far(cli, word_dataset, tmp_path, monkeypatch):
    """Before the first validation, the time kept for it comes from the training speed so far, over the same steps
    in time and in tokens: with every step taking 1 s, half the validation text's tokens at 1 s per 8 tokens
    (batch 2 x bptt 4). Counting a step's time but not its tokens would keep twice that after two steps."""
    from rnnlm_cli.jobs.train import budget, step

    clock = _ShiftedClock(real=False)
    clip = step.Optimization.clip

    def slow_step(self):
        clock.offset += 1.0
        return clip(self)

    monkeypatch.setattr(budget, "time", clock)
    monkeypatch.setattr(step.Optimization, "clip", slow_step)
    kept = 0.5 * len(Dataset(word_dataset).ids("valid")) / 8
    assert kept > 5  # about 10 steps' time
    # training goes on while the steps so far and the time kept fit the budget: through step 4
    budget = kept + 3.5
    summary = cli.json("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--batch-size", "2",
                       "--bptt", "4", "--max-time", f"{budget:.3f}")
    assert summary["stop_reason"] == "max_time" and summary["history"][-1]["step"] == 4
    share = int(100 * summary["history"][-1]["epoch_fraction"])
    assert 0 < share < 100
    shown = cli("info", tmp_path / "m.pt").stdout  # no complete epoch, and a validation inside the first
    assert re.search(rf"epochs trained +0, and {share}% of epoch 1 *\n", shown)
    assert re.search(rf"best valid ppl +[\d,.]+ at epoch 1 \({share}%\) *\n", shown)


def test_max_time_counts_from_the_command_start(cli, word_dataset, tmp_path):
    """The console script hands its start to the train command (as Click's context object), so the budget covers
    the imports too: a budget already spent when training begins stops the run at the first check."""
    from rnnlm_cli.cli.app import app

    args = [str(a) for a in ("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "3",
                             "--max-time", "90", "--json")]
    result = cli.runner.invoke(app, args, obj={"started": time.monotonic() - 100})
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["stop_reason"] == "max_time" and summary["epochs"] == 0
    assert summary["history"][-1]["step"] == 1  # one step, then the check found the budget spent
    assert summary["process_seconds"] >= 100
    assert re.search(r"stopped 1\d\.\d s past the --max-time budget of 90 s \(validating and saving took \d+\.\d s\)",
                     result.stderr)  # 10 s over, and a little more
    from_the_call = cli.json("train", word_dataset, "--out", tmp_path / "n.pt", *TINY_MODEL, "--epochs", "3",
                             "--max-time", "90")  # the same budget counted from the call itself: it is enough
    assert from_the_call["stop_reason"] == "completed" and from_the_call["process_seconds"] < 90


def test_valid_every_validates_inside_epochs_without_changing_training(cli, word_dataset, tmp_path):
    common = [*TINY_MODEL, "--dropout", "0.3", "--seed", "5", "--epochs", "2"]
    straight = cli.json("train", word_dataset, "--out", tmp_path / "a.pt", *common, "-q")
    per_epoch = straight["history"][0]["step"]
    assert per_epoch > 6  # room for validations inside the epoch
    result = cli("train", word_dataset, "--out", tmp_path / "b.pt", *common, "--valid-every", "3", "--json")
    summary = json.loads(result.stdout)
    history = summary["history"]
    # after steps 3, 6, ... of each epoch, and at its end
    steps = [[epoch * per_epoch + step for step in [*range(3, per_epoch, 3), per_epoch]] for epoch in (0, 1)]
    assert [r["step"] for r in history] == steps[0] + steps[1]
    for record in history:
        in_epoch = record["step"] - (record["epoch"] - 1) * per_epoch
        assert record["complete"] == (in_epoch == per_epoch) and 0 < in_epoch <= per_epoch
        assert record["epoch_fraction"] == pytest.approx(in_epoch / per_epoch)
    # validating does not touch training: the same end-of-epoch losses and the same weights
    complete = [r["valid_loss"] for r in history if r["complete"]]
    assert complete == [r["valid_loss"] for r in straight["history"]]
    for name, tensor in _weights(tmp_path / "a.last.pt").items():
        assert torch.equal(tensor, _weights(tmp_path / "b.last.pt")[name]), name
    # any validation can give the best checkpoint
    best = min(history, key=lambda r: r["valid_loss"])
    assert summary["best_valid_ppl"] == pytest.approx(best["valid_ppl"])
    assert load_checkpoint(tmp_path / "b.pt").train["step"] == best["step"]
    assert re.search(rf"^1/2 \({int(100 * 3 / per_epoch)}%\) +\d", result.stderr, re.MULTILINE)
    assert re.search(r"^2/2 +\d", result.stderr, re.MULTILINE)
    assert f"1 ({int(100 * 3 / per_epoch)}%)" in cli("info", tmp_path / "b.pt").stdout
    # a resumed run can turn it off
    resumed = cli.json("train", word_dataset, "--resume", tmp_path / "b.pt", "--epochs", "3", "--valid-every", "0",
                       "-q")
    assert [r["complete"] for r in resumed["history"][len(history):]] == [True]


def test_plateau_decay_and_early_stop(cli, word_dataset, tmp_path):
    # a big model on 300 lines overfits quickly: validation stops improving, the rate is halved, training stops
    summary = cli.json("train", word_dataset, "--out", tmp_path / "m.pt", "--hidden-size", "128", "--emb-size", "64",
                       "--dropout", "0", "--optimizer", "adam", "--lr", "0.02", "--batch-size", "8", "--bptt", "12",
                       "--epochs", "40", "--lr-decay", "2", "--patience", "2", "-q")
    history = summary["history"]
    assert summary["stop_reason"] == "early_stop" and summary["epochs"] == len(history) < 40
    best = math.inf
    for record, following in itertools.pairwise(history):
        improved = record["valid_loss"] < best
        best = min(best, record["valid_loss"])
        assert following["lr"] == pytest.approx(record["lr"] if improved else record["lr"] / 2)
    assert min(r["valid_loss"] for r in history[-2:]) >= min(r["valid_loss"] for r in history[:-2])
    assert history[-1]["lr"] < 0.02


def test_without_a_valid_split_a_tail_of_train_is_held_out(cli, corpus, tmp_path):
    cli("tokenize", corpus["train"], "--out", tmp_path / "d", "-q")
    result = cli("train", tmp_path / "d", "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "1")
    assert "no valid split" in result.stderr and "holding out the last 15 lines" in result.stderr
    assert load_checkpoint(tmp_path / "m.pt").data["validation"].startswith("held out: the last 15 lines")


def test_train_usage_errors(cli, word_dataset, word_model, tmp_path):
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", "--emb-size", "16", "--hidden-size", "32",
                 "--tie-weights", expect=2)
    assert result.stdout == "" and "--tie-weights needs --emb-size equal to --hidden-size" in result.stderr
    assert not (tmp_path / "m.pt").exists()
    assert "--out" in cli("train", word_dataset, expect=2).stderr
    result = cli("train", word_dataset, "--resume", word_model, "--hidden-size", "99", expect=2)
    assert "cannot change --hidden-size" in result.stderr
    result = cli("train", word_dataset, "--resume", tmp_path / "none.pt", expect=1)
    assert "nothing to resume" in result.stderr
    result = cli("train", tmp_path / "no-such-dir", "--out", tmp_path / "m.pt", expect=1)
    assert "no such dataset directory" in result.stderr


def test_presets_apply_and_explicit_options_win(cli, word_dataset, tmp_path):
    summary = cli.json("train", word_dataset, "--out", tmp_path / "p.pt", "--preset", "small", "--epochs", "1",
                       "--hidden-size", "16", "--emb-size", "16", "-q")
    info = cli.json("info", tmp_path / "p.pt")
    settings = info["train_config"]
    assert settings["preset"] == "small"
    assert (settings["bptt"], settings["lr"], settings["clip"], settings["schedule"]) == (20, 20.0, 0.25, "epoch")
    assert (settings["decay_start"], settings["lr_decay"], settings["patience"]) == (4, 2.0, 0)
    assert (settings["init_range"], settings["init_recurrent"]) == (0.1, True)  # Zaremba: every parameter
    assert info["model_config"]["init_recurrent"] is True
    assert settings["hidden_size"] == info["model_config"]["hidden_size"] == 16  # the explicit option won
    assert settings["epochs"] == 1 and summary["epochs"] == 1
    assert "preset small" in cli("train", word_dataset, "--out", tmp_path / "q.pt", "--preset", "small-tied",
                                 "--epochs", "1", "--hidden-size", "16", "--emb-size", "16").stderr
    assert cli.json("info", tmp_path / "q.pt")["model_config"]["tie_weights"] is True
    cli("train", word_dataset, "--out", tmp_path / "s.pt", "--preset", "medium-tied", "--epochs", "1",
        "--hidden-size", "16", "--emb-size", "16", "--init-range", "0.3", "-q")
    settings = cli.json("info", tmp_path / "s.pt")["train_config"]  # the PyTorch example keeps PyTorch's init
    assert (settings["init_range"], settings["init_recurrent"]) == (0.3, False)
    assert "'huge' is not one of" in cli("train", word_dataset, "--out", tmp_path / "r.pt", "--preset", "huge",
                                           expect=2).stderr.replace("\n", " ")


def test_the_small_fast_preset_ties_and_halves_the_rate_after_its_second_epoch(cli, word_dataset, tmp_path):
    summary = cli.json("train", word_dataset, "--out", tmp_path / "f.pt", "--preset", "small-fast",
                       "--hidden-size", "16", "--emb-size", "16", "--batch-size", "4", "-q")
    assert [record["lr"] for record in summary["history"]] == [35, 35, 17.5, 8.75] and summary["epochs"] == 4
    info = cli.json("info", tmp_path / "f.pt")
    assert info["model_config"]["tie_weights"] is True and info["model_config"]["dropout"] == 0
    assert (info["train_config"]["bptt"], info["train_config"]["clip"]) == (35, pytest.approx(5 / 35))


def test_the_medium_fast_preset_ties_and_divides_the_rate_by_1_4_after_its_sixth_epoch(cli, word_dataset, tmp_path):
    summary = cli.json("train", word_dataset, "--out", tmp_path / "m.pt", "--preset", "medium-fast", "--epochs", "8",
                       "--hidden-size", "16", "--emb-size", "16", "--batch-size", "4", "-q")
    assert [record["lr"] for record in summary["history"]] == pytest.approx([35] * 6 + [25, 25 / 1.4])
    info = cli.json("info", tmp_path / "m.pt")
    assert info["model_config"]["tie_weights"] is True and info["model_config"]["dropout"] == 0.5
    settings = info["train_config"]
    assert settings["epochs"] == 8 and settings["preset"] == "medium-fast"  # the explicit option won over its 18
    assert (settings["bptt"], settings["init_range"], settings["lr_decay"]) == (35, 0.05, 1.4)


def test_precision_selection(cli, word_dataset, tmp_path, monkeypatch):
    from rnnlm_cli import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.resolve_precision("bf16", cpu) == "bf16" and runtime.resolve_precision("fp32", cpu) == "fp32"
    runs = {}
    for precision in ("fp32", "bf16"):
        # Adam's steady steps, not SGD at lr 20, whose tiny-model runs amplify rounding differences
        runs[precision] = cli.json("train", word_dataset, "--out", tmp_path / f"{precision}.pt", *TINY_MODEL,
                                   "--epochs", "2", "--optimizer", "adam", "--lr", "0.01", "--precision", precision,
                                   "-q")
        assert runs[precision]["precision"] == precision
    fp32, bf16 = runs["fp32"]["best_valid_ppl"], runs["bf16"]["best_valid_ppl"]
    assert bf16 == pytest.approx(fp32, rel=0.15) and bf16 != fp32  # the same run, in another precision
    monkeypatch.undo()
    auto = cli.json("train", word_dataset, "--out", tmp_path / "auto.pt", *TINY_MODEL, "--epochs", "1", "-q")
    assert auto["precision"] == ("bf16" if runtime.cpu_has_native_bf16() else "fp32")


def test_epoch_schedule_follows_zaremba(cli, word_dataset, tmp_path):
    summary = cli.json("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "5",
                       "--schedule", "epoch", "--decay-start", "2", "--lr-decay", "2", "--lr", "8", "-q")
    assert [record["lr"] for record in summary["history"]] == [8, 8, 4, 2, 1]


def test_cosine_schedule_warms_up_then_decays():
    from rnnlm_cli.config import TrainConfig
    from rnnlm_cli.jobs.train.step import LearningRate

    config = TrainConfig(dataset="d", out="o", optimizer="adam", lr=0.01, schedule="cosine", warmup_steps=10,
                         epochs=10)
    schedule = LearningRate(config, steps_per_epoch=11)
    rates = [schedule.step(step, 0.0) for step in range(110)]
    assert rates[0] == pytest.approx(0.001) and rates[9] == pytest.approx(0.01)
    assert all(a <= b for a, b in itertools.pairwise(rates[:10]))
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[60] == pytest.approx(0.005) and rates[-1] < 1e-5


def test_cosine_run_ends_near_zero(cli, word_dataset, tmp_path):
    summary = cli.json("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "3",
                       "--optimizer", "adamw", "--lr", "0.01", "--weight-decay", "0.01", "--schedule", "cosine",
                       "--warmup-steps", "5", "-q")
    rates = [record["lr"] for record in summary["history"]]
    assert rates[0] > rates[1] > rates[2] and rates[2] < 0.01 * 0.2
    assert summary["best_valid_ppl"] < Dataset(word_dataset).tokenizer.vocab_size / 2  # untrained: ~ vocab size


def test_metrics_file_and_regularisers(cli, word_dataset, tmp_path):
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "2", "--variational",
                 "--dropout-input", "0.1", "--dropout-hidden", "0.2", "--dropout-output", "0.3", "--word-dropout",
                 "0.1", "--json")
    summary = json.loads(result.stdout)
    lines = (tmp_path / "m.metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert summary["metrics"] == str(tmp_path / "m.metrics.jsonl")
    assert records == summary["history"] and len(records) == 2
    assert {"epoch", "train_ppl", "valid_ppl", "lr", "clipped_fraction", "tokens_per_second"} <= set(records[0])
    assert "clipped" in result.stderr
    config = cli.json("info", tmp_path / "m.pt")["model_config"]
    assert (config["variational"], config["dropout_input"], config["dropout_hidden"], config["dropout_output"],
            config["word_dropout"]) == (True, 0.1, 0.2, 0.3, 0.1)


def test_info_draws_the_curve(cli, word_model, tmp_path):
    result = cli("info", word_model)
    assert "training curve" in result.stdout and "━" in result.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        result = cli("info", word_model, "--plot", tmp_path / "curve.png", expect=1)
        assert "pip install 'rnnlm-cli[plot]'" in result.stderr
    else:
        cli("info", word_model, "--plot", tmp_path / "curve.svg")
        assert (tmp_path / "curve.svg").read_text().lstrip().startswith("<?xml")


def test_divergence_stops_with_one_line_and_never_saves_a_broken_model(cli, word_dataset, tmp_path):
    out = tmp_path / "m.pt"
    # an absurd learning rate blows the weights up within a few steps
    result = cli("train", word_dataset, "--out", out, *TINY_MODEL, "--lr", "1e38", "--clip", "0", "-q", expect=1)
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert "became" in result.stderr and "--lr" in result.stderr and "Traceback" not in result.stderr
    for path in (out, tmp_path / "m.last.pt"):
        if path.exists():
            assert all(torch.isfinite(t).all() for t in load_checkpoint(path).model_state.values())


def test_a_new_run_replaces_an_existing_checkpoint_only_with_force(cli, word_dataset, tmp_path):
    out = tmp_path / "m.pt"
    first = cli.json("train", word_dataset, "--out", out, *TINY_MODEL, "--epochs", "1", "--seed", "1", "-q")
    before = out.read_bytes(), (tmp_path / "m.last.pt").read_bytes()
    again = cli("train", word_dataset, "--out", out, *TINY_MODEL, "--epochs", "1", "--seed", "2", expect=1)
    assert again.stdout == "" and again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert f"{out}: already exists; add --force" in again.stderr and f"--resume {out}" in again.stderr
    assert (out.read_bytes(), (tmp_path / "m.last.pt").read_bytes()) == before
    (tmp_path / "other.pt").mkdir()
    folder = cli("train", word_dataset, "--out", tmp_path / "other.pt", *TINY_MODEL, expect=1)
    assert "is a directory" in folder.stderr and folder.stderr.count("\n") == 1
    clash = cli("train", word_dataset, "--resume", out, "--force", expect=2)
    assert "--force is for a new run" in clash.stderr
    second = cli.json("train", word_dataset, "--out", out, *TINY_MODEL, "--epochs", "1", "--seed", "2", "--force",
                      "-q")
    assert second["history"][0]["valid_loss"] != first["history"][0]["valid_loss"]
    assert load_checkpoint(out).train["epoch"] == 1 and out.read_bytes() != before[0]


def test_paths_of_the_wrong_kind_and_datasets_missing_a_split_are_one_line(cli, word_dataset, word_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(word_dataset, broken)
    (broken / "valid.ids").unlink()
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (["tokenize", folder, "--out", tmp_path / "d"], "folder: is a directory"),
        (["eval", word_model, folder], "folder: is a directory"),
        (["eval", folder, word_model], "folder: is a directory"),
        (["train", broken, "--out", tmp_path / "m.pt", *TINY_MODEL], "valid.ids: missing"),
        (["train", word_model, "--out", tmp_path / "m.pt"], "no such dataset directory"),
    ]
    for args, message in cases:
        result = cli(*args, expect=1)
        assert result.stdout == "" and result.stderr.count("\n") == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken", "folder"]  # nothing written


@pytest.mark.parametrize("options, name", [
    (["--bptt", "0"], "--bptt"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--dropout", "1.5"], "--dropout"),
    (["--clip", "-1"], "--clip"),
    (["--max-time", "0"], "--max-time"),
    (["--valid-every", "-1"], "--valid-every"),
    (["--lr-decay", "0.5"], "--lr-decay"),
])
def test_out_of_range_training_options_are_usage_errors(cli, word_dataset, tmp_path, options, name):
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", *options, expect=2)
    assert result.stdout == "" and name in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_sgd_folds_clipping_into_the_learning_rate_without_changing_the_updates(cli, word_dataset, tmp_path,
                                                                                 monkeypatch):
    """Plain SGD scales its step instead of the gradients, and takes the embedding's gradient as a sparse tensor
    of the rows read: the same run as clipping dense gradients first."""
    from rnnlm_cli.jobs.train import step

    common = [*TINY_MODEL, "--epochs", "2", "--lr", "20", "--clip", "0.1", "--precision", "fp32", "--dropout", "0"]
    sparse_choices = []
    choose_sparse = step.sparse_embedding_gradient
    monkeypatch.setattr(step, "sparse_embedding_gradient",
                        lambda *args: sparse_choices.append(choose_sparse(*args)) or sparse_choices[-1])
    folded = cli.json("train", word_dataset, "--out", tmp_path / "a.pt", *common, "-q")
    assert sparse_choices == [True]

    def clip_in_place(self):
        limit = self.config.clip if self.config.clip > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(self.parameters, limit)), None

    monkeypatch.setattr(step.Optimization, "clip", clip_in_place)
    monkeypatch.setattr(step, "sparse_embedding_gradient", lambda *args: False)
    clipped = cli.json("train", word_dataset, "--out", tmp_path / "b.pt", *common, "-q")
    monkeypatch.undo()
    assert folded["history"][0]["clipped_fraction"] > 0.5  # the clip was active
    for a, b in zip(folded["history"], clipped["history"], strict=True):
        assert a["clipped_fraction"] == b["clipped_fraction"]
        assert a["valid_ppl"] == pytest.approx(b["valid_ppl"], rel=1e-4)
    for name, tensor in _weights(tmp_path / "a.last.pt").items():
        assert torch.allclose(tensor, _weights(tmp_path / "b.last.pt")[name], atol=1e-4), name
    # the learning rate kept in the state is the schedule's, not the scaled one of the last step
    assert load_checkpoint(tmp_path / "a.last.pt").train["state"]["optimizer"]["param_groups"][0]["lr"] == 20.0


@pytest.mark.parametrize("change,sparse", [({}, True), ({"optimizer": "adam"}, False), ({"weight_decay": 1e-4}, False),
                                           ({"tie_weights": True}, False), ({"word_dropout": 0.1}, False),
                                           ({"processes": 2}, False), ({"device": "cuda"}, False)])
def test_sparse_embedding_gradient_only_where_plain_sgd_applies_it(change, sparse):
    from types import SimpleNamespace

    from rnnlm_cli.jobs.train.step import sparse_embedding_gradient
    from rnnlm_cli.model import ModelConfig, RNNLanguageModel

    config = SimpleNamespace(optimizer=change.get("optimizer", "sgd"), weight_decay=change.get("weight_decay", 0.0))
    model = RNNLanguageModel(ModelConfig(30, emb_size=8, hidden_size=8, layers=1, tie_weights="tie_weights" in change,
                                         word_dropout=change.get("word_dropout", 0.0)))
    world = SimpleNamespace(active="processes" in change)
    assert sparse_embedding_gradient(config, model, world, torch.device(change.get("device", "cpu"))) is sparse


def test_log_gradients_records_every_step_and_a_hidden_state_probe(cli, word_dataset, tmp_path):
    out = tmp_path / "g.pt"
    summary = cli.json("train", word_dataset, "--out", out, *TINY_MODEL, "--epochs", "2", "--log-gradients", "-q")
    gradients = load_checkpoint(out.with_name("g.last.pt")).train["gradients"]
    assert gradients["step"].tolist() == list(range(1, summary["steps"] + 1))
    norms = gradients["norm"]
    first_epoch = summary["history"][0]
    epoch_norms = norms[: first_epoch["step"]]
    # the clip rate and the per-epoch figures come from the same per-step norms
    assert first_epoch["clipped_fraction"] == pytest.approx(float((epoch_norms > 0.25).float().mean()))
    assert first_epoch["gradient_norm_max"] == pytest.approx(float(epoch_norms.max()))
    valid_tokens = Dataset(word_dataset).split_info("valid")["tokens"]
    for record in summary["history"]:
        probe = record["hidden_gradient_norms"]
        assert len(probe) == min(64, valid_tokens - 1) - 1 and all(v >= 0 for v in probe)
        assert probe[0] > probe[-1]  # a tiny LSTM forgets: the gradient fades with distance
    info = cli("info", out).stdout
    assert "gradient norm per step" in info and "hidden state k steps earlier" in info
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:  # three panels: the curve, the norm per step, the probe
        cli("info", out, "--plot", tmp_path / "g.svg")
        assert (tmp_path / "g.svg").read_text().count("steps back from the loss") == 1
    assert json.loads(cli("info", out, "--json").stdout)["gradients"]["step"][-1] == summary["steps"]
    # without the flag nothing of it is recorded
    plain = cli.json("train", word_dataset, "--out", tmp_path / "p.pt", *TINY_MODEL, "--epochs", "1", "-q")
    assert "hidden_gradient_norms" not in plain["history"][0]
    assert "gradients" not in load_checkpoint(tmp_path / "p.pt").train


def test_plain_sgd_updates_bit_for_bit_as_torch_optim_sgd():
    from rnnlm_cli.model import ModelConfig, RNNLanguageModel
    from rnnlm_cli.model.sgd import PlainSGD

    def model():
        torch.manual_seed(0)
        built = RNNLanguageModel(ModelConfig(40, emb_size=8, hidden_size=8, layers=2))
        built.sparse_embedding_gradient = True  # the embedding's gradient is sparse, as in the presets' runs
        return built

    def run(make_optimizer):
        trained = model()
        optimizer = make_optimizer(trained.parameters())
        generator = torch.Generator().manual_seed(1)
        for step, lr in enumerate([1.0, 1.0, 0.25, 0.5]):
            for group in optimizer.param_groups:
                group["lr"] = lr
            ids = torch.randint(0, 40, (3, 6), generator=generator)
            features, _ = trained.features(ids[:, :-1])
            loss = trained.loss(features.reshape(-1, 8), ids[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            if step == 2:  # a parameter without a gradient is left alone
                next(trained.stack().parameters()).grad = None
            optimizer.step()
        return trained.state_dict(), optimizer.state_dict()

    ours, ours_state = run(lambda params: PlainSGD(params, lr=1.0))
    theirs, their_state = run(lambda params: torch.optim.SGD(params, lr=1.0))
    initial = model().state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
        assert not torch.equal(ours[name], initial[name]), name
    # the same state layout: each loads the other's
    assert ours_state["param_groups"][0] == {key: value for key, value in their_state["param_groups"][0].items()
                                             if key in ours_state["param_groups"][0]}
    plain = PlainSGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    plain.load_state_dict(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.3).state_dict())
    assert plain.param_groups[0]["lr"] == 0.3
    torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, weight_decay=0.1).load_state_dict(plain.state_dict())
    momentum = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    momentum.state[momentum.param_groups[0]["params"][0]] = {"momentum_buffer": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="not plain SGD"):
        plain.load_state_dict(momentum.state_dict())


def test_default_training_does_not_import_torch_dynamo(word_dataset, tmp_path):
    """torch.optim imports torch._dynamo on first use (1.0-1.6 s); plain SGD runs without it."""
    import subprocess
    import sys

    probe = ("import sys; from rnnlm_cli.cli.app import app\n"
             "try:\n    app()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
             "print('torch._dynamo' in sys.modules)")
    for options, imported in (([], "False"), (["--optimizer", "adam"], "True")):
        args = ["train", word_dataset, "--out", tmp_path / "d.pt", *TINY_MODEL, "--epochs", "1", "--force", "-q",
                *options]
        result = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == imported, options


def test_resume_applies_a_changed_weight_decay_in_either_direction(cli, word_dataset, tmp_path):
    """Plain SGD (PlainSGD) and SGD with weight decay (torch.optim) resume from each other's state, and the
    resumed run's --weight-decay is the one applied, not the one in the saved optimizer state."""
    common = [*TINY_MODEL, "--precision", "fp32", "--lr", "1", "-q"]
    for first, then in ((0.0, 0.5), (0.5, 0.0)):
        out = tmp_path / f"wd{first}.pt"
        cli("train", word_dataset, "--out", out, *common, "--epochs", "1", "--weight-decay", first)
        last = out.with_name(f"wd{first}.last.pt")
        after_one_epoch = last.read_bytes()
        norms = {}
        for decay in (first, then):  # each resumed from the state after epoch 1
            last.write_bytes(after_one_epoch)
            cli("train", word_dataset, "--resume", last, "--epochs", "2", "--weight-decay", decay, "-q")
            checkpoint = load_checkpoint(last)
            state = checkpoint.train["state"]
            assert state["epoch"] == 2 and state["optimizer"]["param_groups"][0]["weight_decay"] == decay
            norms[decay] = sum(float(weight.norm()) ** 2 for weight in checkpoint.model_state.values())
        # the decay applied: weights pulled toward zero every step end up far smaller than without it
        assert norms[0.5] < 0.5 * norms[0.0]


def test_an_output_folder_that_takes_no_file_is_refused_before_training(cli, word_dataset):
    import time

    began = time.monotonic()
    result = cli("train", word_dataset, "--out", "/proc/self/model.pt", "--epochs", "50", expect=1)
    assert "/proc/self/model.pt: cannot write there" in result.stderr and result.stdout == ""
    assert "epoch" not in result.stderr and time.monotonic() - began < 30  # no epoch was trained first


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes_it(cli, word_dataset, tmp_path):
    import fcntl

    out = tmp_path / "m.pt"
    lock = tmp_path / ".m.pt.lock"
    with open(lock, "w", encoding="utf-8") as held:  # stands for a run in progress
        held.write("process 12345 on somewhere, since 2026-12-07 07:00:00\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = cli("train", word_dataset, "--out", out, "--epochs", "1", "--force", expect=1)
        assert "another rnnlm train is writing it (process 12345 on somewhere" in result.stderr
        assert result.stdout == "" and not out.exists()
    cli("train", word_dataset, "--out", out, "--layers", "1", "--emb-size", "8", "--hidden-size", "8",
        "--epochs", "1", "-q")  # the lock released: the run goes ahead
    assert out.exists()
