"""Peak RSS of ``featdump extract`` at two input counts, each in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# A fresh interpreter runs featdump as its child and reports the children's ru_maxrss: the peak
# of the largest process in featdump's tree (main process or a decoding worker), in KiB on Linux.
_WRAPPER = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": proc.returncode, "maxrss_kib": peak, "stderr": proc.stderr[-2000:]}))
"""


def peak_rss(model: str, folder: Path, out: Path, args: list[str]) -> int:
    """Peak resident set size in bytes of one extract run over ``folder``."""
    cmd = [sys.executable, "-m", "featdump", "extract", model, str(folder), "-o", str(out), "--overwrite", "--quiet", *args]
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    if got["rc"] != 0:
        raise RuntimeError(f"featdump failed ({got['rc']}): {' '.join(cmd)}\n{got['stderr']}")
    return int(got["maxrss_kib"]) * 1024
