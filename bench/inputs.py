"""Input kinds at scale: the same JPEGs as a folder, as WebDataset tar shards, and as the same shards
over HTTP from 127.0.0.1 (tests/servers.py, a range-serving server in a child process stopped by
PID); the images/s of each, and the peak RSS of runs over 100 and 400 small shards (each a fresh
process: bench/memory.py).

Each extraction runs in a fresh process through ``featdump.extract`` and reports its own **steady
rate**: the images of batches 2..N over the time from the end of batch 1 to the end of batch N, as
the ``progress=`` callbacks see them (process start, imports, model load and the first batch, with
its warm-up, are left out). The summary's rate of the whole extraction loop (model load excluded,
first batch included) is reported beside it. The kinds run interleaved (folder, tar, http, folder,
tar, http, ...) so that a change in the machine's load hits all of them; medians over the
repetitions are reported, and ratios are taken within a repetition before the median.

Run alone (about 2 minutes on 2 CPU cores; ``python -m bench`` runs it too, as its "inputs" section):

    python -m bench.inputs --images 200 --reps 3 --device cpu

Targets: tar / folder >= 0.95 and tar over HTTP / folder >= 0.9 (tf_efficientnet_lite0,
last level, float16; the ImageNet weights when weights/ holds them, else random ones).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import memory
from bench.throughput import ModelCase

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


KINDS = ("folder", "tar", "tar over http")
RATIOS = {"tar / folder": ("tar", 0.95), "tar over http / folder": ("tar over http", 0.9)}  # the targets


class BatchClock:
    """A ``progress=`` object for ``featdump.extract``: when each batch was handed to the writer."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, int]] = []  # (perf_counter, process CPU time, images in the batch)

    def start(self, total: int | None, done: int, description: str) -> None:
        self.marks.clear()

    def advance(self, images: int) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), images))

    def stop(self) -> None: ...

    def steady(self) -> tuple[int, float, float]:
        """(images of batches 2..N, seconds from the end of batch 1 to the end of batch N, and the
        CPU seconds this process (all its threads) spent in that time)."""
        if len(self.marks) < 2:
            return 0, 0.0, 0.0
        first, last = self.marks[0], self.marks[-1]
        return sum(m[2] for m in self.marks[1:]), last[0] - first[0], last[1] - first[1]


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One extraction in this (fresh) process; what its batches and its summary say."""
    import featdump

    clock = BatchClock()
    weights: dict[str, Any] = {"checkpoint": spec["checkpoint"]} if spec["checkpoint"] else {"pretrained": False}
    indices = [int(i) for i in spec["out_indices"].split(",")] if spec["out_indices"] else None
    summary = featdump.extract(
        spec["model"], [spec["input"]], spec["output"], device=spec["device"], dtype=spec["dtype"],
        out_indices=indices, overwrite=True, quiet=True, progress=clock, **weights,
    )  # fmt: skip
    images, seconds, cpu = clock.steady()
    return {
        "images": summary.images_this_run,
        "batches": len(clock.marks),
        "steady_images": images,
        "steady_seconds": seconds,
        "steady_cpu_seconds": cpu,
        "loop_seconds": summary.seconds,
        "failed": summary.num_failed,
    }


def run_one(case: ModelCase, source: str, out: Path, device: str) -> dict[str, Any]:
    """One extraction over ``source`` in a fresh process: images/s steady and of the whole loop."""
    spec = {
        "model": case.model, "input": source, "output": str(out), "device": device, "dtype": case.dtype,
        "out_indices": case.out_indices, "checkpoint": case.checkpoint,
    }  # fmt: skip
    cmd = [sys.executable, "-m", "bench.inputs", "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    out.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"featdump failed ({proc.returncode}) on {source}:\n{proc.stderr[-2000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got["failed"]:
        raise RuntimeError(f"{got['failed']} image(s) failed on {source}: the kinds would not compare")
    got["loop"] = got["images"] / got["loop_seconds"] if got["loop_seconds"] > 0 else 0.0
    # a run of one batch (bench --quick) has no steady part: its loop rate stands in
    got["steady"] = got["steady_images"] / got["steady_seconds"] if got["steady_seconds"] > 0 else got["loop"]
    got["cpu_ms"] = 1000 * got["steady_cpu_seconds"] / got["steady_images"] if got["steady_images"] else None
    return got


def _ratios(values: dict[str, list[float]], invert: bool = False) -> dict[str, list[float]]:
    """Each kind against the folder run of the same repetition (``invert``: folder / kind)."""
    out = {}
    for name, (kind, _) in RATIOS.items():
        pairs = zip(values[kind], values["folder"], strict=True)
        out[name] = [(f / k if invert else k / f) for k, f in pairs]
    return out


def measure(case: ModelCase, paths: list[Path], device: str, reps: int, cache: Path, log: Any) -> dict[str, Any]:
    """Steady images/s of folder, tar and tar-over-HTTP inputs (interleaved repetitions, medians)."""
    n = len(paths) // PER_SHARD * PER_SHARD or len(paths)  # whole shards
    base = cache / "inputs"
    work = base / "runs"
    work.mkdir(parents=True, exist_ok=True)
    folder = copy_folder(base / f"folder-{n}", paths[:n])
    tars = write_tars(base / f"tars-{n}", paths[:n], PER_SHARD)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    with http_server(base) as url:
        sources = {"folder": str(folder), "tar": tars, "tar over http": f"{url}/{Path(tars).relative_to(base).as_posix()}"}
        for rep in range(reps):
            for kind in KINDS:
                load = os.getloadavg()[0]
                got = run_one(case, sources[kind], work / "out.h5", device)
                got["load_before"] = round(load, 2)
                runs[kind].append(got)
                cpu = f", {got['cpu_ms']:.1f} CPU-ms/image" if got["cpu_ms"] else ""
                log(f"  inputs {kind} rep {rep + 1}: {got['steady']:.1f} images/s steady, {got['loop']:.1f} loop{cpu}")
    rates = {k: [r["steady"] for r in v] for k, v in runs.items()}
    loop = {k: [r["loop"] for r in v] for k, v in runs.items()}
    cpu_ms = {k: [r["cpu_ms"] for r in v] for k, v in runs.items()}
    ratios, loop_ratios = _ratios(rates), _ratios(loop)
    has_cpu = all(x for v in cpu_ms.values() for x in v)
    cpu_ratios = _ratios(cpu_ms, invert=True) if has_cpu else {}  # folder CPU / kind CPU: > 1 is cheaper
    loads = [r["load_before"] for v in runs.values() for r in v]
    return {
        "label": case.label,
        "images": n,
        "per_shard": PER_SHARD,
        "runs": runs,
        "load_range": [min(loads), max(loads)],
        "img_s": rates,
        "img_s_median": {k: statistics.median(v) for k, v in rates.items()},
        "loop_img_s_median": {k: statistics.median(v) for k, v in loop.items()},
        "cpu_ms_median": {k: statistics.median(v) for k, v in cpu_ms.items()} if has_cpu else {},
        "ratio_all": ratios,
        "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
        "loop_ratio_median": {k: statistics.median(v) for k, v in loop_ratios.items()},
        "cpu_ratio_median": {k: statistics.median(v) for k, v in cpu_ratios.items()},
        "targets": {name: target for name, (_, target) in RATIOS.items()},
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
    lo, hi = res.get("load_range", [0, 0])
    lines = [
        f"### Input kinds ({res['label']}; {res['images']} JPEGs, tars of {res['per_shard']}; medians of "
        f"interleaved runs; 1-min load average {lo:.1f}-{hi:.1f} before the runs)",
        "",
        "steady: images/s of batches 2..N; loop: images/s of the whole extraction loop (model load "
        "excluded); CPU: featdump's CPU-ms per image in the steady part (all its threads; the server's not counted).",
        "",
        "| input | steady images/s | all | loop images/s | CPU-ms/image |",
        "|---|---|---|---|---|",
    ]
    cpu = res.get("cpu_ms_median") or {}
    for k, v in res["img_s_median"].items():
        every = ", ".join(f"{x:.1f}" for x in res["img_s"][k])
        ms = f"{cpu[k]:.1f}" if k in cpu else "–"
        lines.append(f"| {k} | {v:.1f} | {every} | {res['loop_img_s_median'][k]:.1f} | {ms} |")
    cpu_ratio = res.get("cpu_ratio_median") or {}
    for k, v in res["ratio_median"].items():
        target = res["targets"][k]
        verdict = "met" if v >= target else "**not met**"
        every = ", ".join(f"{x:.2f}" for x in res["ratio_all"][k])
        ms = f"{cpu_ratio[k]:.2f}× (folder / {k.split(' / ')[0]})" if k in cpu_ratio else "–"
        lines.append(f"| {k} (target ≥ {target}: {verdict}) | **{v:.2f}×** | {every} | {res['loop_ratio_median'][k]:.2f}× | {ms} |")
    mem = res.get("memory")
    if mem:
        cells = " · ".join(f"{n} shards {b / (1 << 20):.0f} MiB" for n, b in mem["peak_bytes"].items())
        lines.append(f"| peak RSS over small shards | {cells} | ratio **{mem['ratio']:.3f}** | | |")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inputs", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="JPEGs per run (a multiple of 10) [200]")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions [3]")
    p.add_argument("--device", default="cpu", help="cpu|cuda|cuda:N [cpu]")
    p.add_argument("--shard-counts", default="", help="two tar-shard counts for peak RSS, e.g. 100,400 [none]")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder [bench/results]")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one run, in the fresh process run_one starts
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    from bench.__main__ import cases
    from bench.images import make_jpegs

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cache = args.out / "cache"
    case = cases(["lite0"])[0]
    paths = make_jpegs(cache / "jpegs", args.images)
    log(f"inputs: folder vs tar shards vs tar shards over HTTP, {case.label}, {args.images} JPEGs x {args.reps}")
    res = measure(case, paths, args.device, args.reps, cache, log)
    if args.shard_counts:
        counts = [int(x) for x in args.shard_counts.split(",")]
        res["memory"] = shard_memory(case.model, paths, counts, cache, ["--device", args.device, *case.featdump_args()], log)
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    res["argv"] = sys.argv[1:] if argv is None else argv
    text = "\n".join(markdown(res))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inputs-latest.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    (args.out / "inputs-latest.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
