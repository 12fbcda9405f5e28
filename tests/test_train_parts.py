"""The trainer's parts on their own: the budget on a clock that moves only when told, the learning-rate schedules,
and resume planning."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import TINY_MODEL

from rnnlm_cli.config import TrainConfig
from rnnlm_cli.errors import CheckpointError, ConfigError
from rnnlm_cli.jobs.train.budget import Budget, StopSignals
from rnnlm_cli.jobs.train.step import LearningRate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_stops_when_the_time_left_is_what_finishing_takes():
    clock = Clock()
    budget = Budget(max_time=60, started=90.0, clock=clock)  # the command started 10 s before the budget object
    assert budget.deadline == 150.0 and budget.seconds() == 10.0
    # before the first validation the estimate counts, and only then is it asked for
    assert not budget.out_of_time(lambda: 20.0) and budget.kept_for_finish == 20.0
    clock.now = 129.9
    assert not budget.out_of_time(lambda: 20.0)
    clock.now = 130.0
    assert budget.out_of_time(lambda: 20.0)
    # after one, what it took counts; the estimate is not consulted
    budget.finished(since=120.0)
    assert budget.finish_seconds == 10.0
    assert not budget.out_of_time(lambda: pytest.fail("estimated again")) and budget.kept_for_finish == 10.0
    clock.now = 140.0
    assert budget.out_of_time(lambda: 0.0)
    assert budget.overrun() == -10.0 and not budget.overrun_noticeably()
    clock.now = 153.1  # 5% of 60 s is 3 s
    assert budget.overrun_noticeably()


def test_budget_without_a_limit_never_runs_out():
    clock = Clock()
    budget = Budget(clock=clock)
    clock.now = 1e9
    assert not budget.out_of_time(lambda: pytest.fail("no estimate without a budget"))


def test_budget_save_cadence_in_steps_and_minutes():
    assert [step for step in range(1, 13) if Budget(save_every="4").save_due(step)] == [4, 8, 12]
    clock = Clock()
    budget = Budget(save_every="2m", clock=clock)
    clock.now += 119
    assert not budget.save_due(1)
    clock.now += 1
    assert budget.save_due(2)
    budget.saved()
    assert not budget.save_due(3)
    assert not Budget().save_due(1000)


def test_stop_signals_take_the_first_signal_and_give_the_second_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)  # SIGINT is ignored in background jobs
    with StopSignals() as signals:
        assert signal.getsignal(signal.SIGINT) not in before  # taken over while active
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is before[0]  # a second SIGTERM acts at once
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.parametrize("schedule,expected", [
    ("epoch", [8, 8, 4, 2, 1]),  # decay_start 2: two epochs at the full rate, then halved every epoch
    ("plateau", [8, 8, 8, 8, 8]),  # the plateau schedule acts only after a bad epoch
])
def test_learning_rate_at_each_epoch_start(schedule, expected):
    config = TrainConfig(dataset="d", out="o", lr=8, schedule=schedule, lr_decay=2, decay_start=2)
    rate = LearningRate(config, steps_per_epoch=10)
    assert [rate.epoch_start(epoch, 8.0) for epoch in range(5)] == expected


def test_learning_rate_after_a_bad_epoch():
    plateau = LearningRate(TrainConfig(dataset="d", out="o", lr=8, schedule="plateau", lr_decay=4), 10)
    assert plateau.bad_epoch(8.0) == 2.0
    assert LearningRate(TrainConfig(dataset="d", out="o", lr=8, schedule="plateau", lr_decay=1), 10).bad_epoch(8.0) \
        == 8.0
    assert LearningRate(TrainConfig(dataset="d", out="o", lr=8, schedule="epoch", lr_decay=2), 10).bad_epoch(8.0) \
        == 8.0


def test_resume_refuses_options_of_a_new_run_before_reading_anything(tmp_path):
    from rnnlm_cli.jobs.train import plan_resume

    missing = tmp_path / "none.pt"
    with pytest.raises(ConfigError, match="--preset starts a new run"):
        plan_resume(missing, "d", {}, preset="small")
    with pytest.raises(ConfigError, match="--force is for a new run"):
        plan_resume(missing, "d", {}, force=True)
    with pytest.raises(ConfigError, match=f"keeps writing {missing}"):
        plan_resume(missing, "d", {}, out=str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="nothing to resume from"):
        plan_resume(missing, "d", {})


def test_a_resumed_run_reads_its_checkpoint_once(cli, word_dataset, tmp_path, monkeypatch):
    from rnnlm_cli.jobs.train import run

    cli("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "1", "-q")
    loads = []
    real_load = run.load_checkpoint
    monkeypatch.setattr(run, "load_checkpoint", lambda *args, **kwargs: loads.append(args) or real_load(*args,
                                                                                                            **kwargs))
    summary = cli.json("train", word_dataset, "--resume", tmp_path / "m.pt", "--epochs", "2", "-q")
    assert summary["epochs"] == 2 and len(loads) == 1 and loads[0][0].name == "m.last.pt"


def test_python_callers_get_the_resume_rules(cli, word_dataset, tmp_path):
    """plan_resume gives a Python caller the run's own settings with the changes asked for, as the CLI does."""
    from rnnlm_cli.jobs.train import plan_resume, train

    first = cli.json("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "1", "--lr", "5",
                     "-q")
    with pytest.raises(ConfigError, match="cannot change --hidden-size"):
        plan_resume(tmp_path / "m.pt", str(word_dataset), {"hidden_size": 99})
    config, plan = plan_resume(tmp_path / "m.last.pt", str(word_dataset), {"epochs": 2})
    assert config.lr == 5 and config.out == str(tmp_path / "m.pt") and config.epochs == 2
    result = train(config, resume=plan, progress=False)
    assert result.epochs == 2 and result.history[0] == first["history"][0]
