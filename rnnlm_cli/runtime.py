"""Where and how the tensors run: device choice and seeding."""

from __future__ import annotations

import random

import torch

from rnnlm_cli.config import DEVICES
from rnnlm_cli.errors import ConfigError, RnnlmError


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
