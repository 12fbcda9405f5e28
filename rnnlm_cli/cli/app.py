"""The `rnnlm` command: a Typer app whose commands parse, call one library function and render."""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import os
import select
import signal
import sys
import threading
import time
import traceback
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from typer.core import TyperCommand

from rnnlm_cli import __version__
from rnnlm_cli.cli.output import print_error
from rnnlm_cli.errors import EXIT_ERROR, EXIT_OK, RnnlmError, signal_exit_code

if TYPE_CHECKING:  # Typer carries its own copy of Click
    from typer import _click as click

try:  # Click wraps help text at hyphens too, which cuts option names (--lr-<newline>decay): at spaces only
    from typer._click._textwrap import TextWrapper as _HelpWrapper

    _HelpWrapper.wordsep_re = _HelpWrapper.wordsep_simple_re
except (ImportError, AttributeError):  # another Typer's Click: hyphens may break, nothing worse
    pass


class Command(TyperCommand):
    """A command whose help reads well in an 80-column terminal: Click's plain layout, which wraps the help beside
    each option, with a metavar for every value (the option's own, or N, X, TEXT, a|b|c) instead of Typer's
    ``<str>`` type tags, and usage lines without Typer's ``{ARG}`` braces."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None and not getattr(param, "is_flag", False):
                param.metavar = _metavar(param)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar if param.required else f"[{param.metavar}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((param.metavar + ("..." if param.nargs != 1 else ""), record[1]))
            else:
                options.append(record)
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def _metavar(param: click.Parameter) -> str:
    described = param.type_descriptor  # type: ignore[attr-defined]
    if described.is_choice:
        return "|".join(str(getattr(choice, "value", choice)) for choice in described.choices)
    if param.param_type_name == "argument":
        return param.name.upper()
    annotation = described.annotation
    if typing.get_origin(annotation) is list:  # a repeatable option: each use gives one value
        annotation = typing.get_args(annotation)[0]
    return {int: "N", float: "X"}.get(annotation, "TEXT")


app = typer.Typer(
    name="rnnlm",
    help="Recurrent neural network language models: tokenize a corpus, train, evaluate perplexity, sample text, "
    "fill in blanks.\n\n"
    "Typical run (`rnnlm demo` does all of it on a bundled corpus):\n\n"
    "\b\n"
    "  rnnlm tokenize train.txt --valid valid.txt --test test.txt --out data\n"
    "  rnnlm train data --out model.pt\n"
    "  rnnlm eval model.pt test.txt\n"
    "  rnnlm rescore model.pt nbest.txt --best\n"
    "  rnnlm sample model.pt --prompt 'the market'\n"
    "  rnnlm fill model.pt 'the market ___ sharply .'\n\n"
    "Run `rnnlm COMMAND --help` for a command's options and examples. Shell completion: "
    "`rnnlm --install-completion`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

_debug = False
F = TypeVar("F", bound=Callable[..., Any])
DEBUG_HELP = "Show the full traceback of an error."


def handle_errors(command: F) -> F:
    """Turn library errors into one line on stderr and an exit code; --debug (before or after the command's
    name) shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        global _debug
        _debug = _debug or debug
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(signal_exit_code(signal.SIGINT)) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(EXIT_OK) from None
        except RnnlmError as error:
            if _debug:
                traceback.print_exc()
            print_error(str(error), error.label)
            raise typer.Exit(error.exit_code) from None
        except Exception as error:  # noqa: BLE001 - one line for anything unforeseen, too
            if _debug:
                traceback.print_exc()
            print_error(f"{type(error).__name__}: {error} (run `rnnlm --debug ...` for the traceback)")
            raise typer.Exit(EXIT_ERROR) from None

    debug_parameter = inspect.Parameter(
        "debug", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option("--debug", help=DEBUG_HELP)])
    signature = inspect.signature(command, eval_str=True)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), debug_parameter])
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
    debug: Annotated[bool, typer.Option("--debug", help=DEBUG_HELP)] = False,
) -> None:
    global _debug
    _debug = debug


def _register() -> None:
    from rnnlm_cli.cli.commands import (
        demo,
        evaluate,
        fill,
        info,
        rescore,
        sample,
        tokenize,
        train,
        tune,
    )

    for module in (tokenize, train, evaluate, tune, rescore, sample, fill, info, demo):
        app.command(module.NAME, cls=Command)(handle_errors(module.command))


_register()


def main() -> None:
    """The `rnnlm` console script (and `python -m rnnlm_cli`): the app, then a quick exit.

    Once a command has finished, the process runs the atexit handlers, flushes its output and leaves with
    os._exit. That skips the interpreter's teardown of torch's modules, 0.4-0.8 s spent on every command
    (docs/benchmarks-history.md) that a shell loop over many corpora would pay each time. Tests call ``app`` instead.
    """
    try:
        app(obj={"started": time.monotonic()})  # rnnlm train's --max-time budget counts from here
    except SystemExit as stop:
        # Click ends help that `| head` cut short with 1 (after swapping in a quiet stdout); for us that is a success
        broken_pipe = stop.code == 1 and sys.stdout is not sys.__stdout__ and _reader_gone()
        _exit(EXIT_OK if broken_pipe else stop.code)
    _exit(EXIT_OK)


def _reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (poll reports an error on the writing end)."""
    try:
        poller = select.poll()
        poller.register(sys.__stdout__.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() here, or no stdout at all
        return False


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
        with contextlib.suppress(OSError, ValueError):  # a reader that went away (`| head`), a closed stream
            stream.flush()
    os._exit(code)
