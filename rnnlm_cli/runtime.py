"""Where and how the tensors run: device choice, seeding and the CPU threads."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable

import torch

from rnnlm_cli.config import DEVICES
from rnnlm_cli.errors import ConfigError, RnnlmError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; a device that is asked for but absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RnnlmError(f"--device {name} was asked for, but PyTorch sees no CUDA GPU here (try --device auto)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RnnlmError(f"--device {name} was asked for, but PyTorch sees only {torch.cuda.device_count()} "
                             f"CUDA GPU(s) here (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        return device
    if name == "mps":
        if not mps_available():
            raise RnnlmError("--device mps was asked for, but PyTorch sees no Apple GPU (MPS) here (try --device auto)")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def seed_everything(seed: int) -> None:
    """Fix every random number generator the toolkit uses (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA generators too


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX-512 BF16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` is bf16 on CUDA GPUs that support it and on CPUs with native bf16, else fp32 (MPS included)."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The context that runs matrix products in ``precision`` (master weights stay fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the OS.

    Training and scoring free and reallocate the same large tensors (logits, their gradients)
    every step; by default glibc returns them to the OS, and touching them again costs thousands
    of page faults per step (measured: 2.8 million minor faults in a 40 s PTB run, 0.1 million
    with this, and 15-20% more tokens/s). A no-op where glibc is not the allocator.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)  # large blocks come from the heap, not fresh mmaps
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # and the heap's free top is not trimmed


# Below this many multiply-adds per token, a second intra-op thread bought about 2% on 2 cores, inside the noise
# (1 x 32 GRU: 1.02x over six alternated runs; a 1 x 64 LSTM, above: 1.08-1.38x), so such models keep to one
# thread and leave the other core free (docs/benchmarks.md, "Sharing the CPU").
ONE_THREAD_MULTIPLY_ADDS = 50_000
# How often the thread count is reconsidered; reading /proc/stat takes about 33 us.
THREADS_INTERVAL = 0.5
# The shortest interval between two readings that the first thread count is judged by.
MIN_READING_SECONDS = 0.1


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds spent busy on this process's CPUs by anyone, CPU seconds of this process), or None where
    /proc/stat cannot be read. Both only grow; their changes over an interval are what counts."""
    try:
        allowed = {f"cpu{index}" for index in os.sched_getaffinity(0)}
        busy_ticks = 0
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                name, *fields = line.split()
                if name in allowed:
                    # user nice system idle iowait irq softirq steal: all but idle and iowait were taken by someone
                    ticks = [int(value) for value in fields[:8]]
                    busy_ticks += sum(ticks) - ticks[3] - ticks[4]
        own = os.times()
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return busy_ticks / os.sysconf("SC_CLK_TCK"), own.user + own.system


Reading = tuple[float, float, float]  # (clock, CPU seconds busy on this process's CPUs, this process's CPU seconds)


class ThreadShare:
    """Torch's intra-op threads: ``limit`` while this process has the CPUs to itself, fewer while others are busy.

    Torch's OpenMP threads spin-wait for each other at the end of every parallel region. With another busy process
    on the same cores, each region waits for a thread that is not running: on 2 cores two trainings at 2 threads
    each ran at 3-25% of their speed alone, with this at 58-63% (docs/benchmarks-history.md). So every ``interval``
    seconds ``poll`` looks at how many cores the rest of the machine kept busy and leaves them to it. ``since``, a
    reading from before the job began (while it loaded its data and model), decides the first count, so that a job
    started beside a busy one does not begin by colliding with it.
    """

    def __init__(self, limit: int, cpus: int | None = None, interval: float = THREADS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 sample: Callable[[], tuple[float, float] | None] = cpu_seconds, since: Reading | None = None) -> None:
        self.limit = limit
        self.cpus = cpu_count() if cpus is None else cpus
        self.interval, self.clock, self.sample = interval, clock, sample
        self.last = self._reading()
        self.threads = limit
        if since is not None and self.last is not None and self.last[0] - since[0] >= MIN_READING_SECONDS:
            self.threads = self._fitting(since, self.last)
        log.debug("starting with %d of %d threads", self.threads, limit)
        torch.set_num_threads(self.threads)
        self.next_check = self.clock() + interval

    def _reading(self) -> Reading | None:
        sample = self.sample()
        return None if sample is None else (self.clock(), *sample)

    def _fitting(self, before: Reading, after: Reading) -> int:
        """The threads that fit beside what the other processes kept busy between two readings: a core counts as
        taken once they keep it more than half busy."""
        seconds = max(after[0] - before[0], 1e-9)
        others = max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / seconds  # cores
        return max(1, min(self.limit, int(self.cpus - others + 0.5)))

    def poll(self) -> None:
        """Cheap between checks: call it once per step."""
        if self.last is None or self.limit == 1 or self.clock() < self.next_check:
            return
        now = self._reading()
        if now is None:
            self.last = None
            return
        threads = self._fitting(self.last, now)
        self.last, self.next_check = now, now[0] + self.interval
        if threads != self.threads:
            log.debug("%d -> %d threads", self.threads, threads)
            self.threads = threads
            torch.set_num_threads(threads)


def _machine_reading() -> Reading | None:
    sample = cpu_seconds()
    return None if sample is None else (time.monotonic(), *sample)


_share: ThreadShare | None = None
# The CPU readings when a job's module first imported this one, before the job loaded its data and built its model
# (about 33 us to take): the first interval the threads are chosen by.
_IMPORTED = _machine_reading()


def configure_threads(requested: int | None, multiply_adds_per_token: int) -> int:
    """Set the intra-op threads for a job whose model does ``multiply_adds_per_token``: ``requested`` (--threads)
    exactly; else as OMP_NUM_THREADS says, if set; else one for a model too small to gain from more, or all the
    CPUs but those other processes keep busy (``poll_threads`` follows their load). Returns the threads now."""
    global _share
    _share = None
    if requested is not None:
        torch.set_num_threads(requested)
    elif not os.environ.get("OMP_NUM_THREADS"):
        limit = 1 if multiply_adds_per_token < ONE_THREAD_MULTIPLY_ADDS else cpu_count()
        _share = ThreadShare(limit, since=_IMPORTED)
    return torch.get_num_threads()


def poll_threads() -> None:
    """Let the thread count follow the other processes' load (see ``ThreadShare``); call it once per step."""
    if _share is not None:
        _share.poll()
