"""glibc ``malloc`` settings for the forward pass (Linux; a no-op elsewhere).

PyTorch on the CPU allocates every activation with ``malloc``. glibc serves large blocks with
``mmap`` and gives them back on ``free``, so each batch page-faults its activations afresh
(zero-filled pages, ~1-8 thousand faults per image); and glibc's adaptive mmap threshold makes how
much of that happens depend on the allocation history, so the same model ran at 67-137 images/s
in otherwise identical processes here (``tf_efficientnet_lite0``, batches of 8, 2 cores).
Serving everything from the heap and never trimming it (``M_MMAP_MAX=0``, ``M_TRIM_THRESHOLD``
1 GiB) reuses the same pages batch after batch: ~170 images/s in every process, ~30 faults per
image. Peak memory is unchanged (the heap holds what the run had live at its peak anyway).

Left alone when the user chose an allocator (``LD_PRELOAD`` of jemalloc/tcmalloc/mimalloc) or
glibc settings (``MALLOC_*_`` variables, ``GLIBC_TUNABLES`` with ``malloc``), and when
``FEATDUMP_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30

_GLIBC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_done: list[str] = []  # what tune_malloc() did in this process (it runs once)


def user_choice(env: dict[str, str] | None = None) -> str:
    """Why the user's own allocator settings win ("" when there are none)."""
    env = dict(os.environ) if env is None else env
    if env.get("FEATDUMP_MALLOC_TUNING", "").strip() == "0":
        return "FEATDUMP_MALLOC_TUNING=0"
    preload = env.get("LD_PRELOAD", "")
    for name in _ALLOCATORS:
        if name in preload:
            return f"LD_PRELOAD {name}"
    for var in _GLIBC_VARS:
        if var in env:
            return var
    if "malloc" in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return ""


def tune_malloc() -> str:
    """Apply the settings once per process; returns what was done (``make bench`` records it):
    ``"heap"`` when applied, else why not."""
    if _done:
        return _done[0]
    _done.append(_tune())
    return _done[0]


def _tune() -> str:
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
