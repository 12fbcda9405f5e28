"""CPU threads: all cores while the machine is otherwise idle, fewer while other processes keep cores busy."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import TINY_MODEL

from rnnlm_cli import runtime


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Every test here changes torch's process-wide thread count; put it back."""
    threads = torch.get_num_threads()
    yield
    runtime._share = None
    torch.set_num_threads(threads)


class Machine:
    """A clock and /proc readings under the test's control: ``run(seconds, others, own)`` lets time pass with other
    processes keeping ``others`` cores busy and this one ``own``."""

    def __init__(self) -> None:
        self.now = 100.0
        self.busy = 5_000.0  # CPU seconds taken by anyone since boot
        self.own = 10.0

    def clock(self) -> float:
        return self.now

    def sample(self) -> tuple[float, float]:
        return self.busy, self.own

    def run(self, seconds: float, others: float, own: float) -> None:
        self.now += seconds
        self.own += own * seconds
        self.busy += (others + own) * seconds


def test_threads_follow_the_other_processes_load():
    machine = Machine()
    share = runtime.ThreadShare(2, cpus=2, interval=0.5, clock=machine.clock, sample=machine.sample)
    assert share.threads == 2 and torch.get_num_threads() == 2
    machine.run(0.6, others=0.02, own=1.95)  # alone
    share.poll()
    assert torch.get_num_threads() == 2
    machine.run(0.6, others=1.0, own=0.9)  # a busy loop beside us
    share.poll()
    assert share.threads == 1 and torch.get_num_threads() == 1
    machine.run(0.6, others=0.95, own=1.0)  # it keeps its core: so do we keep to one
    share.poll()
    assert torch.get_num_threads() == 1
    machine.run(0.3, others=0.0, own=1.0)  # it ended, but the interval has not passed: no new reading yet
    share.poll()
    assert torch.get_num_threads() == 1
    machine.run(0.3, others=0.0, own=1.0)
    share.poll()
    assert torch.get_num_threads() == 2


def test_the_first_count_follows_the_load_while_the_job_loaded():
    """Two jobs started together each see the other busy while they load, and begin with one thread each instead of
    colliding first (two trainings at 2 threads ran at 126 tokens/s until their first poll, against 8,400 at 1)."""
    machine = Machine()
    since = (machine.now, *machine.sample())
    machine.run(0.4, others=1.0, own=1.0)
    share = runtime.ThreadShare(2, cpus=2, clock=machine.clock, sample=machine.sample, since=since)
    assert share.threads == 1 and torch.get_num_threads() == 1
    since = (machine.now, *machine.sample())
    machine.run(0.4, others=0.1, own=1.0)  # alone
    assert runtime.ThreadShare(2, cpus=2, clock=machine.clock, sample=machine.sample, since=since).threads == 2
    since = (machine.now, *machine.sample())
    machine.run(0.05, others=1.0, own=1.0)  # too short to judge by: every core until the first poll
    assert runtime.ThreadShare(2, cpus=2, clock=machine.clock, sample=machine.sample, since=since).threads == 2


def test_a_core_counts_as_taken_once_others_keep_it_more_than_half_busy():
    machine = Machine()
    share = runtime.ThreadShare(4, cpus=4, interval=0.5, clock=machine.clock, sample=machine.sample)
    for others, threads in ((0.4, 4), (0.6, 3), (2.2, 2), (2.6, 1), (3.9, 1), (1.4, 3)):
        machine.run(1.0, others=others, own=4 - others)
        share.poll()
        assert share.threads == threads, others


def test_without_readings_the_threads_stay_put():
    machine = Machine()
    share = runtime.ThreadShare(2, cpus=2, clock=machine.clock, sample=lambda: None)  # no /proc/stat here
    machine.run(5.0, others=2.0, own=0.0)
    share.poll()
    assert share.threads == 2 and torch.get_num_threads() == 2


def test_cpu_seconds_reads_this_machine():
    first = runtime.cpu_seconds()
    if first is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(2_000_000))  # some CPU time of our own
    second = runtime.cpu_seconds()
    assert second[1] > first[1] and second[0] >= first[0]


def test_configure_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "_IMPORTED", None)  # no first judgement of the load: the machine's stays out of it
    assert runtime.configure_threads(1, 10**9) == 1 and runtime._share is None  # --threads: exactly that
    assert runtime.configure_threads(None, 10_000) == 1  # a model too small to gain from a second thread
    assert runtime.configure_threads(None, 10**7) == runtime.cpu_count() and runtime._share is not None
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.configure_threads(None, 10**7) == 1 and runtime._share is None  # the environment decides


def test_threads_option(cli, word_dataset, tmp_path):
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "1", "--threads", "2")
    assert re.search(r"^on cpu in \w+, 2 threads; ", result.stderr, re.MULTILINE)
    result = cli("train", word_dataset, "--out", tmp_path / "n.pt", *TINY_MODEL, "--epochs", "1")
    assert re.search(r"^on cpu in \w+, 1 thread; ", result.stderr, re.MULTILINE)  # the tiny model's own choice
    assert "--threads" in cli("eval", tmp_path / "m.pt", "-", "--threads", "0", input="a\n", expect=2).stderr
