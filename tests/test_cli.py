"""The command line as a whole: help, version, exit codes, pipes, and the demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnlm_cli import __version__
from rnnlm_cli.cli.app import app

COMMANDS = ["tokenize", "train", "eval", "tune", "rescore", "sample", "fill", "info", "demo"]


def test_help_lists_every_command_with_a_summary(cli):
    result = cli("--help", env={"COLUMNS": "80"})
    assert result.stderr == ""
    registered = [command.name for command in app.registered_commands]
    assert registered == COMMANDS
    listing = result.stdout.split("Commands:", 1)[1]
    for name in COMMANDS:
        line = next(line for line in listing.splitlines() if line.startswith(f"  {name} "))
        summary = line.split(name, 1)[1].strip()
        assert len(summary) > 20 and not summary.endswith("..."), line  # whole, not cut to the width


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(cli, name):
    result = cli(name, "--help")
    assert "Example" in result.stdout and f"rnnlm {name}" in result.stdout
    command = next(c for c in app.registered_commands if c.name == name)
    assert command.callback.__doc__ and len(command.callback.__doc__.strip()) > 40


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_reads_whole_at_80_columns(cli, name):
    """No line wider than the terminal, no type tags, every option name and choice whole at the start of its row,
    every example line as written."""
    import typer

    command = typer.main.get_command(app)
    if name is not None:
        command = command.commands[name]
    text = cli(*([name] if name else []), "--help", env={"COLUMNS": "80"}).stdout
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not re.search(r"<(str|bool|int|float|list|path)|\{[A-Z]+\}", text)
    assert not re.search(r"-\n", text)  # nothing broken at a hyphen
    rows = text.split("\nOptions:\n", 1)[1].splitlines()
    for param in command.params:
        if param.param_type_name != "option" or param.hidden:
            continue
        long_name = max(param.opts, key=len)
        row = next((line for line in rows if re.match(rf"  (-\w, )?{re.escape(long_name)}\b", line)), None)
        assert row is not None, f"no row starts with {param.opts}"
        if param.metavar and not getattr(param, "is_flag", False):
            assert f"{long_name} {param.metavar}" in row  # choices as a|b|c, unbroken
    docstring = (command.callback.__wrapped__ if name else app.info).__doc__ if name else app.info.help
    examples = [line.strip() for line in docstring.splitlines() if line.strip().startswith(("rnnlm ", "torchrun "))]
    for example in examples:
        assert f"    {example}" in text  # indented under Examples, never re-wrapped


def test_debug_works_after_the_command_name_too(cli, word_model, monkeypatch):
    import rnnlm_cli.jobs.evaluate

    def explode(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(rnnlm_cli.jobs.evaluate, "evaluate", explode)
    result = cli("eval", word_model, "-", "--debug", input="a\n", expect=1)
    assert "Traceback" in result.stderr and "ValueError: boom" in result.stderr


def test_shell_completion_completes_options_and_choices(cli):
    assert "--install-completion" in cli("--help").stdout
    result = cli(env={"_RNNLM_COMPLETE": "complete_bash", "COMP_WORDS": "rnnlm train --preset medium",
                      "COMP_CWORD": "3"}, prog_name="rnnlm")
    assert result.stdout.split() == ["medium", "medium-tied", "medium-fast"]


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["info", "{model}"], ["info", "{model}", "--json"]])
def test_output_into_a_closed_pipe_ends_with_0(args, word_model):
    """As with `| head`: the reader is gone before anything is written."""
    command = [sys.executable, "-m", "rnnlm_cli", *[arg.format(model=word_model) for arg in args]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""


def test_version(cli):
    assert cli("--version").stdout.strip() == f"rnnlm {__version__}"


def test_module_entry_point_and_fast_help():
    result = subprocess.run([sys.executable, "-m", "rnnlm_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"rnnlm {__version__}"
    # --help must not import torch (it takes seconds); check what the help run imported
    probe = "import sys; from rnnlm_cli.cli.app import app; sys.argv=['rnnlm','--help']\n" \
            "try:\n    app()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stderr.strip() == "False"


QUICK_EXIT_PROBE = """
import atexit, sys
from rnnlm_cli.cli.app import main

class Probe:
    def __del__(self):  # runs when the interpreter tears its modules down, which the quick exit skips
        print("teardown", file=sys.stderr)

probe = Probe()
atexit.register(print, "atexit handler", file=sys.stderr)
sys.argv = ["rnnlm", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("args,code,stdout,stderr", [
    (["--version"], 0, f"rnnlm {__version__}\n", "atexit handler\n"),
    (["eval", "missing.pt", "-"], 1, "", "rnnlm: error: missing.pt: no such checkpoint\natexit handler\n"),
    (["eval", "--no-such-option"], 2, "", "--no-such-option"),
])
def test_console_script_runs_atexit_handlers_then_skips_teardown(args, code, stdout, stderr, tmp_path):
    result = subprocess.run([sys.executable, "-c", QUICK_EXIT_PROBE, *args], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == code
    assert result.stdout == stdout
    assert stderr in result.stderr and result.stderr.endswith("atexit handler\n")
    assert "teardown" not in result.stderr


def test_console_script_flushes_all_of_a_long_output(cli, word_model, corpus, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(corpus["train"].read_text(encoding="utf-8") * 5, encoding="utf-8")
    args = ["eval", str(word_model), str(big), "--level", "token", "--format", "tsv", "--precision", "fp32"]
    result = subprocess.run([sys.executable, "-m", "rnnlm_cli", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    assert len(result.stdout) > 100_000  # well past any buffer
    assert result.stdout == cli(*args).stdout


def test_usage_errors_exit_2_with_nothing_on_stdout(cli, word_model):
    result = cli("eval", word_model, "-", "--no-such-option", expect=2)
    assert result.stdout == "" and "--no-such-option" in result.stderr
    assert cli("no-such-command", expect=2).stdout == ""


def test_unexpected_errors_are_one_line_unless_debug(cli, word_model, monkeypatch):
    import rnnlm_cli.jobs.evaluate

    def explode(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(rnnlm_cli.jobs.evaluate, "evaluate", explode)
    result = cli("eval", word_model, "-", input="a\n", expect=1)
    assert result.stderr == "rnnlm: error: ValueError: boom (run `rnnlm --debug ...` for the traceback)\n"
    result = cli("--debug", "eval", word_model, "-", input="a\n", expect=1)
    assert "Traceback" in result.stderr and "boom" in result.stderr


def test_broken_pipe_ends_quietly(word_model):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = f"{sys.executable} -m rnnlm_cli sample {word_model} -n 3000 --max-tokens 5 --seed 1 | head -n 1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env)
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr == ""
    assert result.returncode == 0


def test_keyboard_interrupt_exits_130(cli, word_model, monkeypatch):
    import rnnlm_cli.jobs.sample

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rnnlm_cli.jobs.sample.Generator, "samples", interrupted)
    result = cli("sample", word_model, expect=130)
    assert result.stdout == "" and "interrupted" in result.stderr


def test_demo_runs_end_to_end(cli, tmp_path):
    out = tmp_path / "checkpoints"
    result = cli("demo", "--out-dir", out)
    samples = result.stdout.splitlines()
    assert len(samples) == 8
    for prompt, pair in zip(["Tom", "On Sunday ,", "太郎は", "日曜日に"], (samples[i:i + 2] for i in range(0, 8, 2))):
        assert all(line.startswith(prompt) for line in pair)
    # the Japanese samples are Japanese: valid UTF-8, no replacement characters, longer than their prompts
    assert result.stdout_bytes.decode("utf-8") == result.stdout and "\ufffd" not in result.stdout
    assert all(len(line) > len("日曜日に") + 3 for line in samples[4:])
    assert (out / "demo.pt").exists() and (out / "demo.last.pt").exists() and (out / "demo-data" / "meta.json").exists()
    # each step's summary as soon as it is done: the dataset before training, the scores before the samples
    log = result.stderr
    assert log.index("1/4 tokenize") < log.index("unigram tokenizer, 600 tokens") < log.index("2/4 train")
    assert log.index("3/4 evaluate") < log.index("ppl1") < log.index("4/4 sample")
    assert "samples: 2 per prompt, temperature 0.8, seed 0" in log and "--resume" not in log
    assert re.search(r"^5/5 ", log, re.MULTILINE)  # all five epochs, however slow the machine: no time cap
    # the demo corpus comes from a small grammar: a trained model should find it very predictable
    test_text = Path(__file__).resolve().parent.parent / "corpora" / "demo" / "test.txt"
    assert cli.json("eval", out / "demo.pt", test_text)["total"]["ppl"] < 3


def test_the_readme_layout_table_names_every_module():
    """Each module of rnnlm_cli/ is in README's layout table, in the row of its folder."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Layout", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for row in table.splitlines()[2:]:
        path, what = row.strip("|").split("|", 1)
        rows[path.strip().strip("`")] = set(re.findall(r"`([^`]+)`", what))
    for module in sorted((root / "rnnlm_cli").rglob("*.py")):
        folder = module.parent.relative_to(root).as_posix() + "/"
        assert folder in rows, f"no row for {folder}"
        assert module.name in rows[folder] or (module.name == "__init__.py" and folder != "rnnlm_cli/"), \
            f"{folder}{module.name}"


def test_the_model_settings_are_written_once():
    """ModelSettings holds the model's settings; ModelConfig, TrainConfig, the checkpoint's type checks, the train
    command's options and docs/checkpoint-format.md all follow it."""
    import dataclasses

    import typer.main

    from rnnlm_cli.checkpoint import _SETTING_TYPES
    from rnnlm_cli.cli.commands import train as train_command
    from rnnlm_cli.config import ARCHITECTURE, FIXED_ON_RESUME, ModelConfig, ModelSettings, TrainConfig

    settings = [field.name for field in dataclasses.fields(ModelSettings)]
    assert list(ARCHITECTURE) == settings
    assert {field.name for field in dataclasses.fields(ModelConfig)} == {*settings, "vocab_size"}
    assert set(settings) <= {field.name for field in dataclasses.fields(TrainConfig)}
    assert set(_SETTING_TYPES) == {*settings, "vocab_size"}
    assert set(FIXED_ON_RESUME) <= {*settings, "optimizer"}
    # the train command takes every setting of TrainConfig as an option of the same name
    options = {param.name for param in typer.main.get_command_from_info(
        typer.models.CommandInfo(callback=train_command.command), pretty_exceptions_short=True,
        rich_markup_mode=None).params}
    assert set(train_command._OPTIONS) <= options
    assert set(settings) <= set(train_command._OPTIONS)
    # the checkpoint format's documentation has a row for each setting of model_config
    docs = (Path(__file__).resolve().parent.parent / "docs" / "checkpoint-format.md").read_text(encoding="utf-8")
    table = docs.split("### `model_config`", 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"`([a-z_]+)`", "\n".join(row.split("|")[1] for row in table.splitlines()[2:])))
    assert documented == {*settings, "vocab_size"}


def _imports(module: Path) -> set[str]:
    """The modules that ``module`` imports (absolute names; its relative imports resolved)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_layers_hold():
    """DESIGN.md's floors: only cli/ imports typer and rich; no job imports another (demo runs them all); nothing
    below the jobs imports one; the model knows nothing of files or tokenizers; the settings need no torch."""
    package = Path(__file__).resolve().parent.parent / "rnnlm_cli"
    checked = 0
    for module in sorted(package.rglob("*.py")):
        parts = module.relative_to(package.parent).with_suffix("").parts
        imports = _imports(module)
        floor = parts[1] if len(parts) > 2 else ""
        if floor != "cli" and module.name != "__main__.py":  # `python -m rnnlm_cli` starts the CLI
            assert not {name for name in imports if name.split(".")[0] in ("typer", "rich")}, module
            assert not {name for name in imports if name.startswith("rnnlm_cli.cli")}, module
        if floor == "jobs":
            job = parts[2]
            others = {name.split(".")[2] for name in imports if name.startswith("rnnlm_cli.jobs.")} - {job}
            assert job == "demo" or not others, f"{module}: imports the jobs {others}"
        elif floor not in ("cli", ""):
            assert not {name for name in imports if name.startswith("rnnlm_cli.jobs")}, module
        if floor == "model":
            assert not {name for name in imports if name.startswith(("rnnlm_cli.checkpoint", "rnnlm_cli.data",
                                                                     "rnnlm_cli.tokenizers", "rnnlm_cli.scoring"))}, \
                module
        if floor == "config" or module.name in ("tokenizers.py", "errors.py", "textio.py", "nbest.py"):
            assert not {name for name in imports if name.split(".")[0] in ("torch", "numpy")}, module
        checked += 1
    assert checked > 40
