"""Process-wide settings (featdump/run/process.py): the allocator settings apply (or step aside for the
user's own); OpenMP's wait policy through the Python API, measured in CPU time (not wall time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featdump.run.process import OMP_ADVICE, passive_omp, torch_settings

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
    from featdump.run.process import user_choice

    assert user_choice(env) == why


_FAULTS = """
import resource, sys, torch, timm
from featdump.run.process import tune_malloc
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


# --------------------------------------------------------------------------- OpenMP wait policy

_RUN = r"""
import json, os, sys, warnings
if sys.argv[3] == "torch-first":
    import torch  # noqa: F401
import featdump
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    featdump.extract("resnet18", [sys.argv[1]], sys.argv[2], pretrained=False, overwrite=True)
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "warnings": [str(w.message) for w in caught]}))
"""


def _run(photos: Path, out: Path, mode: str, env: dict[str, str]) -> tuple[dict, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(photos), str(out), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    assert os.waitstatus_to_exitcode(status) == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize(("device", "shapes_vary", "tuned"), [("cuda", False, True), ("cuda", True, False), ("cpu", False, False)])
def test_cudnn_autotunes_a_fixed_input_size_only(device: str, shapes_vary: bool, tuned: bool) -> None:
    """A size mode's shapes vary: cuDNN would tune again for each new one (the flag is set, not used, on CPU)."""
    import torch

    torch.backends.cudnn.benchmark = False
    with torch_settings(torch.device(device), None, shapes_vary=shapes_vary):
        assert torch.backends.cudnn.benchmark is tuned
    assert torch.backends.cudnn.benchmark is False


def test_passive_omp_sets_the_policy_only_before_torch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert passive_omp() == "" and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice wins
    monkeypatch.delenv("OMP_WAIT_POLICY")
    import torch  # noqa: F401 - once torch is loaded it is too late to set it

    assert passive_omp() == OMP_ADVICE and "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.slow
def test_api_sets_passive_omp_or_warns_and_spinning_costs_cpu(tmp_path: Path, photos: Path):
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    got, _ = _run(photos, tmp_path / "a.h5", "featdump-first", base)
    assert got == {"policy": "PASSIVE", "warnings": []}
    got, _ = _run(photos, tmp_path / "b.h5", "torch-first", base)
    assert got["policy"] is None and any("OMP_WAIT_POLICY" in w for w in got["warnings"]), got

    # Why it matters: with another process busy on a core, spinning OpenMP threads burn CPU time.
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cpu = {}
        for policy in ("PASSIVE", "ACTIVE", "PASSIVE", "ACTIVE"):
            _, seconds = _run(photos, tmp_path / f"{policy}.h5", "featdump-first", dict(base, OMP_WAIT_POLICY=policy))
            cpu[policy] = min(cpu.get(policy, seconds), seconds)
    finally:
        hog.kill()
        hog.wait()
    assert cpu["PASSIVE"] < 0.9 * cpu["ACTIVE"], cpu  # 0.82 on a quiet machine, 0.85 in a CI run
