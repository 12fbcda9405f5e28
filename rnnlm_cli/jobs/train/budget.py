"""When a run stops and saves: the ``--max-time`` budget, the ``--save-every`` cadence, and Ctrl-C / SIGTERM.

Every reading of the time goes through one clock, ``time.monotonic`` unless another is given, so that the
arithmetic can be tested with a clock that moves only when told to.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from rnnlm_cli.config import save_interval


class StopSignals:
    """While active, the first SIGINT or SIGTERM only sets ``received`` (training stops after the step and
    saves); the handlers that were there before come back at once, so a second signal acts immediately."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to that thread only
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __exit__(self, *exc_info: object) -> None:
        self._restore()


class Budget:
    """The time a process may train, when to save the resumable state, and whether a signal asked to stop.

    ``max_time`` counts from ``started`` (a reading of ``clock``; by default the budget's creation) and covers the
    validation and saves after the stop: training stops once less is left than they are expected to take, which is
    as long as the last ones took (``finished``), or before the first, what ``first_estimate`` says.
    """

    def __init__(self, max_time: float | None = None, save_every: str | None = None, started: float | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or time.monotonic
        self.started = self.clock() if started is None else started
        self.max_time = max_time
        self.deadline = None if max_time is None else self.started + max_time
        self.save_steps, self.save_seconds = save_interval(save_every) if save_every else (None, None)
        self.last_saved = self.clock()
        self.finish_seconds: float | None = None  # how long this process's last validation and saves took
        self.kept_for_finish = 0.0  # of the budget, when it was last checked
        self.signals = StopSignals()

    def __enter__(self) -> Budget:
        self.signals.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.signals.__exit__(*exc_info)

    @property
    def received(self) -> int | None:
        """The signal received since the budget became active, if any."""
        return self.signals.received

    def seconds(self) -> float:
        """This process's seconds so far."""
        return self.clock() - self.started

    def out_of_time(self, first_estimate: Callable[[], float]) -> bool:
        """Whether training must stop now to end within the budget, validation and saves included."""
        if self.deadline is None:
            return False
        self.kept_for_finish = self.finish_seconds if self.finish_seconds is not None else first_estimate()
        return self.clock() >= self.deadline - self.kept_for_finish

    def finished(self, since: float) -> None:
        """A validation and its saves, begun at the clock reading ``since``, are done."""
        self.finish_seconds = self.clock() - since

    def save_due(self, step: int) -> bool:
        """Whether --save-every asks for the resumable state after optimizer step ``step``."""
        if self.save_steps is not None:
            return step % self.save_steps == 0
        return self.save_seconds is not None and self.clock() - self.last_saved >= self.save_seconds

    def saved(self) -> None:
        self.last_saved = self.clock()

    def overrun(self) -> float:
        """Seconds spent past the budget (negative while within it)."""
        assert self.max_time is not None
        return self.seconds() - self.max_time

    def overrun_noticeably(self) -> bool:
        """Whether the run ended clearly past its budget: one shorter than a step, a validation and the saves."""
        return self.overrun() > max(0.5, 0.05 * (self.max_time or 0.0))
