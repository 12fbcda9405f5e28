"""Data-parallel training under torchrun (2 CPU processes, gloo) and device selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL

from rnnlm_cli.checkpoint import load_checkpoint

# two processes on one machine; torchrun's --standalone rendezvous picks a free port
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rnnlm_cli"]
# no dropout: the two-process run then differs from one process only by the order of floating-point sums
EXACT = [*TINY_MODEL, "--dropout", "0", "--precision", "fp32", "--device", "cpu", "--optimizer", "adam", "--lr",
         "0.01", "--seed", "3"]


def _torchrun(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process on a 2-core machine
    return subprocess.run([*TORCHRUN, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_train_the_model_of_one_process_with_the_same_global_batch(cli, word_dataset, corpus,
                                                                                  tmp_path):
    single = cli.json("train", word_dataset, "--out", tmp_path / "one.pt", *EXACT, "--epochs", "2", "-q")
    run = _torchrun("train", word_dataset, "--out", tmp_path / "two" / "m.pt", *EXACT, "--epochs", "2", "--json")
    assert run.returncode == 0, run.stderr
    double = json.loads(run.stdout)  # one JSON document: only rank 0 reports
    assert double["stop_reason"] == "completed" and double["epochs"] == 2 and double["steps"] == single["steps"]
    # the training loss of every epoch (pooled over the processes) is the one process's, to float rounding
    for mine, theirs in zip(double["history"], single["history"], strict=True):
        assert mine["train_ppl"] == pytest.approx(theirs["train_ppl"], rel=1e-5)
        # each process validates its half of the lines from a fresh state: close, not equal, on 40 lines
        assert mine["valid_ppl"] == pytest.approx(theirs["valid_ppl"], rel=0.03)
    one, two = load_checkpoint(tmp_path / "one.last.pt"), load_checkpoint(tmp_path / "two" / "m.last.pt")
    for name, tensor in one.model_state.items():
        assert torch.allclose(two.model_state[name], tensor, atol=1e-4, rtol=0), name
    assert two.train["processes"] == 2 and one.train["processes"] == 1
    # the result: both final models score the test text alike (eval in one process)
    scores = [cli.json("eval", path, corpus["test"], "-q")["total"]["ppl"]
              for path in (tmp_path / "one.last.pt", tmp_path / "two" / "m.last.pt")]
    assert scores[1] == pytest.approx(scores[0], rel=1e-4)
    # rank 0 alone wrote: one metrics line per epoch, no files from rank 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["m.last.pt", "m.metrics.jsonl", "m.pt"]
    assert len((tmp_path / "two" / "m.metrics.jsonl").read_text().splitlines()) == 2


def test_two_processes_stopped_mid_epoch_resume_exactly(word_dataset, tmp_path):
    """With dropout: each process's random generator and every stream's hidden state are saved and restored."""
    common = [*TINY_MODEL, "--dropout", "0.3", "--precision", "fp32", "--device", "cpu", "--epochs", "3", "-q"]
    straight = _torchrun("train", word_dataset, "--out", tmp_path / "a.pt", *common, "--json")
    cut = _torchrun("train", word_dataset, "--out", tmp_path / "b.pt", *common, "--json", "--max-time", "0.3")
    assert straight.returncode == 0 and cut.returncode == 0, straight.stderr + cut.stderr
    assert json.loads(cut.stdout)["stop_reason"] == "max_time"
    state = load_checkpoint(tmp_path / "b.last.pt").train["state"]
    assert len(state["rng"]["ranks"]) == 2
    if state["batch"]:  # stopped inside an epoch: the hidden state of all 8 streams was kept
        assert state["hidden"][0].shape[1] == 8
    resumed = _torchrun("train", word_dataset, "--resume", tmp_path / "b.pt", "--json", "-q")
    assert resumed.returncode == 0, resumed.stderr
    complete = [r for r in json.loads(resumed.stdout)["history"] if r["complete"]]
    assert [r["valid_loss"] for r in complete] == [r["valid_loss"] for r in json.loads(straight.stdout)["history"]]
    a, b = load_checkpoint(tmp_path / "a.last.pt").model_state, load_checkpoint(tmp_path / "b.last.pt").model_state
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_batch_that_does_not_divide_among_the_processes_is_refused(word_dataset, tmp_path):
    run = _torchrun("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL[:-2], "--batch-size", "7",
                    "--epochs", "1", "-q")
    assert run.returncode != 0 and run.stdout == ""
    assert "--batch-size 7 does not divide among 2 processes" in run.stderr
    assert not any(tmp_path.iterdir())


def test_device_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    from rnnlm_cli import runtime

    for cuda, mps, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(runtime, "mps_available", lambda mps=mps: mps)
        assert runtime.resolve_device("auto").type == expected
    assert runtime.resolve_precision("auto", torch.device("mps")) == "fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_an_absent_device_is_one_clear_error(cli, word_dataset, word_model, tmp_path, monkeypatch):
    from rnnlm_cli import runtime

    monkeypatch.setattr(runtime, "mps_available", lambda: False)
    for device, name in (("cuda", "no CUDA GPU"), ("mps", "no Apple GPU (MPS)")):
        result = cli("train", word_dataset, "--out", tmp_path / "m.pt", "--device", device, expect=1)
        assert result.stdout == "" and name in result.stderr and result.stderr.count("\n") == 1
        assert name in cli("eval", word_model, "-", "--device", device, input="a b\n", expect=1).stderr
        assert name in cli("sample", word_model, "--device", device, expect=1).stderr
    assert not any(tmp_path.iterdir())
