"""Errors whose messages are written for the person at the terminal.

The CLI prints ``str(error)`` as one line and exits with ``exit_code``; anything else is a bug.
"""


class RnnlmError(Exception):
    """A problem the user can fix: bad input, a missing file, an unusable checkpoint."""

    exit_code = 1
    label = "error"  # the word after "rnnlm: " on stderr


class InputError(RnnlmError):
    """An input file or stream that cannot be read or is not UTF-8 text."""


class DatasetError(RnnlmError):
    """A dataset directory that is missing, incomplete or inconsistent."""


class CheckpointError(RnnlmError):
    """A checkpoint that cannot be loaded or does not match what it claims to hold."""


class ConfigError(RnnlmError):
    """Settings that cannot work (say, tied weights with different sizes): a usage error."""

    exit_code = 2


class TokenizerError(RnnlmError):
    """A tokenizer that cannot be trained or rebuilt from its stored data."""


class TrainingError(RnnlmError):
    """Training cannot go on (say, the loss became NaN)."""


class TrainingInterrupted(RnnlmError):
    """Training stopped on SIGINT (exit 130) or SIGTERM (exit 143) after saving a resumable state."""

    label = "interrupted"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
