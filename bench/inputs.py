"""Input kinds at scale: the same JPEGs as a folder, as WebDataset tar shards, and as the same shards
over HTTP from 127.0.0.1 (tests/servers.py, a range-serving server in a child process stopped by
PID); images/s of each (startup cancelled, as for the folder rows), and the peak RSS of runs over
100 and 400 small shards (each a fresh process: bench/memory.py)."""

from __future__ import annotations

import contextlib
import io
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import memory
from bench.throughput import ModelCase, featdump_rate

ROOT = Path(__file__).resolve().parent.parent
PER_SHARD = 10  # images per tar shard in the throughput rows


def write_tars(folder: Path, paths: list[Path], per_shard: int) -> str:
    """``paths`` as shards ``folder/s-000000.tar`` ... (``KEY.jpg`` members); the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    n = -(-len(paths) // per_shard)
    for s in range(n):
        name = folder / f"s-{s:06d}.tar"
        if name.exists():
            continue
        tmp = name.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tf:
            for k, p in enumerate(paths[s * per_shard : (s + 1) * per_shard]):
                data = p.read_bytes()
                info = tarfile.TarInfo(f"{s:06d}_{k:04d}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        tmp.replace(name)
    return str(folder / f"s-{{000000..{n - 1:06d}}}.tar")


def copy_folder(folder: Path, paths: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        link = folder / f"{i:06d}.jpg"
        if not link.exists():
            link.symlink_to(p.resolve())
    return folder


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    """The tests' range-serving HTTP server on 127.0.0.1 (a child process, killed by its PID)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(ROOT / "tests" / "servers.py"), "http", str(root), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the bench HTTP server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def measure(case: ModelCase, paths: list[Path], device: str, reps: int, cache: Path, log: Any) -> dict[str, Any]:
    """images/s of folder, tar and tar-over-HTTP inputs (interleaved repetitions, medians)."""
    n_large = max(2 * PER_SHARD, len(paths) // PER_SHARD * PER_SHARD)
    n_small = max(PER_SHARD, n_large // 4 // PER_SHARD * PER_SHARD)
    base = cache / "inputs"
    work = base / "runs"
    work.mkdir(parents=True, exist_ok=True)
    small_dir = copy_folder(base / f"folder-{n_small}", paths[:n_small])
    large_dir = copy_folder(base / f"folder-{n_large}", paths[:n_large])
    tars = base / f"tars-{n_large}"
    large_tar = write_tars(tars, paths[:n_large], PER_SHARD)
    small_tar = str(tars / f"s-{{000000..{n_small // PER_SHARD - 1:06d}}}.tar")
    extra: list[str] = []
    rates: dict[str, list[float]] = {"folder": [], "tar": [], "tar over http": []}
    with http_server(base) as url:
        inputs = {
            "folder": (small_dir, large_dir),
            "tar": (small_tar, large_tar),
            "tar over http": tuple(f"{url}/{Path(t).relative_to(base).as_posix()}" for t in (small_tar, large_tar)),
        }
        for rep in range(reps):
            for kind, (small, large) in inputs.items():
                rate, _ = featdump_rate(case, small, large, n_small, n_large, work, device, extra)  # type: ignore[arg-type]
                rates[kind].append(rate)
                log(f"  inputs {kind} rep {rep + 1}: {rate:.1f} images/s")
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {
        "tar / folder": [t / f for t, f in zip(rates["tar"], rates["folder"], strict=True)],
        "tar over http / folder": [t / f for t, f in zip(rates["tar over http"], rates["folder"], strict=True)],
    }
    return {
        "label": case.label,
        "images": [n_small, n_large],
        "img_s": rates,
        "img_s_median": med,
        "ratio_all": ratios,
        "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
    }


def shard_memory(model: str, paths: list[Path], counts: list[int], cache: Path, args: list[str], log: Any) -> dict[str, Any]:
    """Peak RSS of runs over ``counts`` small shards (one image each), each in a fresh process."""
    folder = cache / "inputs" / "one-image-shards"
    pattern = write_tars(folder, [paths[i % len(paths)] for i in range(max(counts))], 1)
    peaks: dict[str, int] = {}
    for n in counts:
        inp = pattern.replace(pattern[pattern.index("{") : pattern.index("}") + 1], f"{{000000..{n - 1:06d}}}")
        peaks[str(n)] = memory.peak_rss(model, inp, cache / "rss-shards.h5", args)  # type: ignore[arg-type]
        log(f"  {n} shards: peak RSS {peaks[str(n)] / (1 << 20):.0f} MiB")
    return {"peak_bytes": peaks, "ratio": peaks[str(counts[-1])] / peaks[str(counts[0])]}


def markdown(res: dict[str, Any]) -> list[str]:
    lines = [f"### Input kinds ({res['label']}; images/s, medians; {res['images'][1]} - {res['images'][0]} images)", ""]
    lines += ["| input | images/s | all |", "|---|---|---|"]
    for k, v in res["img_s_median"].items():
        lines.append(f"| {k} | {v:.1f} | {', '.join(f'{x:.1f}' for x in res['img_s'][k])} |")
    for k, v in res["ratio_median"].items():
        lines.append(f"| {k} | **{v:.2f}×** | {', '.join(f'{x:.2f}' for x in res['ratio_all'][k])} |")
    mem = res.get("memory")
    if mem:
        cells = " · ".join(f"{n} shards {b / (1 << 20):.0f} MiB" for n, b in mem["peak_bytes"].items())
        lines.append(f"| peak RSS over small shards | {cells} | ratio **{mem['ratio']:.3f}** |")
    lines.append("")
    return lines
