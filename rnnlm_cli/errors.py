"""How a command ends: the errors whose messages are written for the person at the terminal, and every exit code.

- ``EXIT_OK`` (0): success; also when stdout's reader went away (``| head``): the rest was not wanted.
- ``EXIT_ERROR`` (1): ``RnnlmError`` and its subclasses but ``ConfigError``: bad data, a missing file, an unusable
  checkpoint, training that cannot go on. Anything unforeseen (a bug) too, as one line naming the exception.
- ``EXIT_USAGE`` (2): ``ConfigError``, settings that cannot work, and Click's own usage errors (an unknown option,
  a value outside an option's choices).
- ``signal_exit_code`` (130 for SIGINT, 143 for SIGTERM): Ctrl-C (``KeyboardInterrupt``), ``TrainingInterrupted``
  once training saved its state, and a tokenize run that cleaned up after SIGTERM.

The CLI (``cli/app.py``) prints ``str(error)`` as one line and exits with the code above; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def signal_exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + signum


class RnnlmError(Exception):
    """A problem the user can fix: bad input, a missing file, an unusable checkpoint."""

    exit_code = EXIT_ERROR
    label = "error"  # the word after "rnnlm: " on stderr


class InputError(RnnlmError):
    """An input file or stream that cannot be read or is not UTF-8 text."""


class DatasetError(RnnlmError):
    """A dataset directory that is missing, incomplete or inconsistent."""


class CheckpointError(RnnlmError):
    """A checkpoint that cannot be loaded or does not match what it claims to hold."""


class ConfigError(RnnlmError):
    """Settings that cannot work (say, tied weights with different sizes): a usage error."""

    exit_code = EXIT_USAGE


class TokenizerError(RnnlmError):
    """A tokenizer that cannot be trained or rebuilt from its stored data."""


class TrainingError(RnnlmError):
    """Training cannot go on (say, the loss became NaN)."""


class TrainingInterrupted(RnnlmError):
    """Training stopped on SIGINT or SIGTERM after saving a resumable state."""

    label = "interrupted"

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = signal_exit_code(signum)
