"""Nothing lost: Ctrl-C / SIGTERM save a resumable state, kill -9 never leaves a broken checkpoint."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

from rnnlm_cli.checkpoint import load_checkpoint


def _start_training(dataset: Path, out: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rnnlm_cli", "train", str(dataset), "--out", str(out), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``path`` is (re)written by ``process``."""
    before = _mtime(path)
    deadline = time.monotonic() + seconds
    while _mtime(path) in (None, before):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model_state


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_state_and_the_resumed_run_is_exact(cli, word_dataset, tmp_path, signum, exit_code):
    common = [*TINY_MODEL, "--dropout", "0.3", "--seed", "5", "--epochs", "4", "--patience", "0", "-q"]
    straight = cli.json("train", word_dataset, "--out", tmp_path / "straight.pt", *common)

    out = tmp_path / "stopped.pt"
    # --save-every 1 writes the .last file after the first step: the sign that training is under way
    process = _start_training(word_dataset, out, *common, "--save-every", "1")
    _wait_for(tmp_path / "stopped.last.pt", process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith(f"rnnlm: interrupted: {signal.Signals(signum).name}")
    assert f"rnnlm train {word_dataset} --resume {out}" in stderr and "Traceback" not in stderr
    state = load_checkpoint(tmp_path / "stopped.last.pt").train["state"]
    assert 0 < state["step"] < straight["steps"]

    resumed = cli.json("train", word_dataset, "--resume", out, "-q")
    assert resumed["steps"] == straight["steps"] and resumed["stop_reason"] == "completed"
    assert [r["valid_loss"] for r in resumed["history"]] == [r["valid_loss"] for r in straight["history"]]
    for name, tensor in _weights(tmp_path / "straight.last.pt").items():
        assert torch.equal(tensor, _weights(tmp_path / "stopped.last.pt")[name]), name


def test_kill_9_at_random_moments_leaves_loadable_checkpoints(word_dataset, tmp_path):
    out = tmp_path / "m.pt"
    moments = random.Random(4)
    for _ in range(4):
        # a checkpoint every step, so most kills land while one is being written
        process = _start_training(word_dataset, out, *TINY_MODEL, "--epochs", "50", "--save-every", "1", "--force",
                                  "-q")
        _wait_for(tmp_path / "m.last.pt", process)  # this run is training and writing
        time.sleep(moments.uniform(0.0, 0.4))
        process.kill()
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL
        for path in (out, tmp_path / "m.last.pt"):
            if path.exists():
                assert load_checkpoint(path).model_config.hidden_size == 24
    assert (tmp_path / "m.last.pt").exists()
    # a kill during a write leaves that process's temporary file; the next save beside it removes it
    finished = subprocess.run([sys.executable, "-m", "rnnlm_cli", "train", str(word_dataset), "--out", str(out),
                               *TINY_MODEL, "--epochs", "1", "--force", "-q"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.last.pt", "m.metrics.jsonl", "m.pt"]


def test_save_every_steps_writes_the_state_mid_epoch(cli, word_dataset, tmp_path, monkeypatch):
    import rnnlm_cli.jobs.train.run as train_module

    saved: list[tuple[str, int]] = []
    real_save = train_module.save_checkpoint

    def recording_save(checkpoint, path):
        state = checkpoint.train["state"]
        saved.append((Path(path).name, state["batch"] if state else -1))
        real_save(checkpoint, path)

    monkeypatch.setattr(train_module, "save_checkpoint", recording_save)
    result = cli.json("train", word_dataset, "--out", tmp_path / "m.pt", *TINY_MODEL, "--epochs", "1",
                      "--save-every", "4", "-q")
    steps = result["steps"]
    last_saves = [batch for name, batch in saved if name == "m.last.pt"]
    # every 4th step mid-epoch, then the end-of-epoch state (next epoch, batch 0)
    assert last_saves == [*range(4, steps + 1, 4), 0]
    assert ("m.pt", -1) in saved


@pytest.mark.parametrize("value", ["abc", "0", "-3", "0m", "5s"])
def test_save_every_rejects_what_it_cannot_read(cli, word_dataset, tmp_path, value):
    result = cli("train", word_dataset, "--out", tmp_path / "m.pt", "--save-every", value, expect=2)
    assert "--save-every" in result.stderr and result.stdout == "" and not (tmp_path / "m.pt").exists()
