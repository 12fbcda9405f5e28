"""The tutorials run: every `$ ` command of docs/tutorial.md and docs/tutorial.ja.md, in order, in a scratch folder,
with each training cut to one epoch. Both tutorials must show the same commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = [ROOT / "docs" / "tutorial.md", ROOT / "docs" / "tutorial.ja.md"]


def commands(path: Path) -> list[str]:
    """The `$ ` lines of the ```console blocks, in order."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
        found += [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    return found


def test_both_tutorials_show_the_same_commands():
    english, japanese = (commands(path) for path in TUTORIALS)
    assert len(english) >= 15 and english == japanese


def test_every_tutorial_command_runs(tmp_path):
    env = {**os.environ, "C": str(ROOT / "corpora"), "COLUMNS": "100",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in commands(TUTORIALS[0]):
        quick = re.sub(r"--epochs \d+", "--epochs 1", command)  # the steps, not the results, are under test
        result = subprocess.run(["bash", "-c", quick], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"$ {quick}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        if command.startswith(("rnnlm eval", "rnnlm fill", "rnnlm sample", "rnnlm info", "python3")):
            assert result.stdout.strip(), f"$ {quick} printed nothing"
    assert sorted(path.name for path in tmp_path.glob("*.pt") if ".last" not in path.name) == [
        "both.pt", "deep.pt", "elman.pt", "gru.pt", "hello-elman.pt", "hello-gru.pt", "hello-lstm.pt", "lstm.pt",
        "vanish.pt"]
