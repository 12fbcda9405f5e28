"""The `rnnlm` command: a Typer app whose commands parse, call one library function and render."""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from rnnlm_cli import __version__
from rnnlm_cli.cli.output import print_error
from rnnlm_cli.errors import RnnlmError

app = typer.Typer(
    name="rnnlm",
    help="Recurrent neural network language models: tokenize a corpus, train, evaluate perplexity, sample text, "
    "fill in blanks.\n\n"
    "Typical run (`rnnlm demo` does all of it on a bundled corpus):\n\n"
    "    rnnlm tokenize train.txt --valid valid.txt --test test.txt --out data/\n"
    "    rnnlm train data/ --out model.pt\n"
    "    rnnlm eval model.pt test.txt\n"
    "    rnnlm sample model.pt --prompt 'the market'\n"
    "    rnnlm fill model.pt 'the market ___ sharply .'\n\n"
    "Run `rnnlm COMMAND --help` for a command's options and examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = False
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(command: F) -> F:
    """Turn library errors into one line on stderr and an exit code; --debug shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(0) from None
        except RnnlmError as error:
            if _debug:
                traceback.print_exc()
            print_error(str(error), error.label)
            raise typer.Exit(error.exit_code) from None
        except Exception as error:  # noqa: BLE001 - one line for anything unforeseen, too
            if _debug:
                traceback.print_exc()
            print_error(f"{type(error).__name__}: {error} (run `rnnlm --debug ...` for the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _silence_stdout() -> None:
    """After `| head` closed the pipe, keep Python from complaining when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rnnlm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    global _debug
    _debug = debug


def _register() -> None:
    from rnnlm_cli.cli.commands import demo, evaluate, fill, info, sample, tokenize, train

    for module in (tokenize, train, evaluate, sample, fill, info, demo):
        app.command(module.NAME)(handle_errors(module.command))


_register()


def main() -> None:
    """The `rnnlm` console script (and `python -m rnnlm_cli`): the app, then a quick exit.

    Once a command has finished, the process runs the atexit handlers, flushes its output and leaves with
    os._exit. That skips the interpreter's teardown of torch's modules, 0.4-0.8 s spent on every command
    (docs/benchmarks.md) that a shell loop over many corpora would pay each time. Tests call ``app`` instead.
    """
    try:
        app(obj={"started": time.monotonic()})  # rnnlm train's --max-time budget counts from here
    except SystemExit as stop:
        _exit(stop.code)
    _exit(0)


def _exit(code: object) -> NoReturn:
    if not isinstance(code, int):  # None, or a message as sys.exit("...") gives one
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    for thread in threading.enumerate():  # what Python's own shutdown waits for
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging's flush, multiprocessing's clean-up, weakref finalizers
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`) or a closed stream: nothing to keep
            pass
    os._exit(code)
