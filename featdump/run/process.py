"""Process-wide settings a run makes, in one place: glibc's malloc, OpenMP's wait policy, torch's
threads and cuDNN's autotuner. The Python API documents each (:func:`featdump.extract`) and restores
what it can when the run ends; the malloc tuning stays for the rest of the process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from typing import Any

from featdump.environment import MALLOC_TUNING

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30

_GLIBC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def user_choice(env: dict[str, str] | None = None) -> str:
    """Why the user's own allocator settings win ("" when there are none)."""
    env = dict(os.environ) if env is None else env
    if not MALLOC_TUNING.value(env):
        return "FEATDUMP_MALLOC_TUNING=0"
    preload = env.get("LD_PRELOAD", "")
    chosen = [f"LD_PRELOAD {name}" for name in _ALLOCATORS if name in preload] + [var for var in _GLIBC_VARS if var in env]
    if "malloc" in env.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    return chosen[0] if chosen else ""


@functools.cache
def tune_malloc() -> str:
    """Serve every allocation from a heap never trimmed, so each batch reuses the last one's pages
    instead of page-faulting afresh (docs/performance.md); once per process. Returns what was done
    (``make bench`` records it): ``"heap"``, else why not."""
    if not sys.platform.startswith("linux"):
        return "not linux"
    reason = user_choice()
    if reason:
        return f"left alone ({reason})"
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt semantics like these)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not glibc"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if not (mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(M_MMAP_MAX, 0)):
        return "mallopt refused"
    return "heap"


# --------------------------------------------------------------------------- OpenMP wait policy

OMP_ADVICE = (
    "OMP_WAIT_POLICY is not set and torch is already imported, so its OpenMP threads spin while they "
    "wait and fight decoding threads and other processes for the cores (several times slower on a busy "
    "machine); set OMP_WAIT_POLICY=PASSIVE in the environment, or import featdump and run extract "
    "before importing torch"
)


def passive_omp() -> str:
    """Ask OpenMP (read once, when torch loads libgomp) to let waiting threads sleep, not spin, unless
    the user chose a policy. Returns :data:`OMP_ADVICE` when torch is already loaded (too late), else ``""``."""
    if "OMP_WAIT_POLICY" in os.environ:
        return ""
    if "torch" in sys.modules:
        return OMP_ADVICE
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return ""


# --------------------------------------------------------------------------- torch settings


@contextlib.contextmanager
def torch_settings(device: Any, threads: int | None, shapes_vary: bool = False) -> Iterator[None]:
    """torch's intra-op threads (``threads``, None: torch's default) and, on CUDA, cuDNN's autotuner
    for a fixed input size (the fastest kernels; not when ``shapes_vary``: it would tune again for
    each new shape) for the duration of a run; both restored afterwards."""
    import torch

    old_threads = torch.get_num_threads()
    old_benchmark = torch.backends.cudnn.benchmark
    try:
        if threads:
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not shapes_vary
        yield
    finally:
        if threads and torch.get_num_threads() != old_threads:
            torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_benchmark
