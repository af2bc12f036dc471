"""What ``extract --ray`` costs: a 3-shard run on a local Ray cluster vs the same 3 shards run one
after the other (``--shard I/3``), and Ray's own start-up per task.

Wall time and peak memory are of the whole process tree (each command runs in a session of its own;
the peak is the largest sum of the session's resident set sizes, sampled every 50 ms), so Ray's
GCS, raylet and worker processes count. Information, never pass/fail.

Example: python -m bench.ray_overhead --images 48 --model resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.images import make_jpegs


def _session_rss(sid: int) -> int:
    """Resident bytes of every process in session ``sid``."""
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                total += int((entry / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak session RSS (bytes) of ``cmd``; raises when it fails."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, _session_rss(proc.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}\n{err[-2000:]}")
    return seconds, peak


_STARTUP = """
import json, time, ray
t = time.perf_counter(); ray.init(address="local", include_dashboard=False, logging_level="ERROR"); init = time.perf_counter() - t
f = ray.remote(num_cpus=1)(lambda: time.perf_counter())
t = time.perf_counter(); ray.get(f.remote()); cold = time.perf_counter() - t
t = time.perf_counter(); ray.get([f.remote() for _ in range(10)]); warm = (time.perf_counter() - t) / 10
print(json.dumps({"init_s": init, "cold_task_s": cold, "warm_task_s": warm}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        make_jpegs(folder, args.images)
        base = [sys.executable, "-m", "featdump", "extract", args.model, str(folder), "--no-pretrained",
                "--device", "cpu", "--quiet"]  # fmt: skip
        one_by_one = [measured([*base, "-o", f"{tmp}/seq/f.h5", "--shard", f"{i}/3"]) for i in range(3)]
        on_ray = measured([*base, "-o", f"{tmp}/ray/f.h5", "--ray", "local", "--shards", "3"])
        startup = json.loads(subprocess.run([sys.executable, "-c", _STARTUP], capture_output=True, text=True,
                                            check=True).stdout.strip().splitlines()[-1])  # fmt: skip
    report = {
        "images": args.images, "model": args.model, "cpus": os.cpu_count(),
        "one_by_one_s": round(sum(s for s, _ in one_by_one), 1),
        "one_by_one_peak_mib": round(max(p for _, p in one_by_one) / 2**20),
        "ray_s": round(on_ray[0], 1), "ray_peak_mib": round(on_ray[1] / 2**20),
        **{k: round(v, 3) for k, v in startup.items()},
    }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
