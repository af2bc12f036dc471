"""The allocator settings apply (or step aside for the user's own)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({}, ""),
        ({"FEATDUMP_MALLOC_TUNING": "0"}, "FEATDUMP_MALLOC_TUNING=0"),
        ({"FEATDUMP_MALLOC_TUNING": "1"}, ""),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD jemalloc"),
        ({"LD_PRELOAD": "/opt/libfaketime.so"}, ""),
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
        ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=1"}, ""),
    ],
)
def test_malloc_tuning_steps_aside_for_the_user(env: dict[str, str], why: str) -> None:
    from featdump.run.alloc import user_choice

    assert user_choice(env) == why


_FAULTS = """
import resource, sys, torch, timm
from featdump.run.alloc import tune_malloc
print(tune_malloc())
torch.set_num_threads(1)
m = timm.create_model("resnet18").eval()
x = torch.randn(8, 3, 160, 160)
with torch.inference_mode():
    m(x); m(x)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        m(x)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 32)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_malloc_tuning_reuses_activation_memory() -> None:
    """With the settings, batches reuse the heap's pages instead of page-faulting fresh ones
    (counted, not timed: minor page faults per image after warm-up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["PYTHONPATH"] = str(ROOT)
    tuned = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, check=True)
    what, faults = tuned.stdout.splitlines()
    assert what == "heap"
    env["FEATDUMP_MALLOC_TUNING"] = "0"
    plain = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, check=True)
    what_plain, faults_plain = plain.stdout.splitlines()
    assert what_plain.startswith("left alone")
    assert float(faults) < 50, (faults, faults_plain)
    assert float(faults) < float(faults_plain) / 4, (faults, faults_plain)
