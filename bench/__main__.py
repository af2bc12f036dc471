"""``python -m bench``: featdump throughput, codecs and memory on this machine.

Prints a markdown report and saves it with the raw numbers (JSON) under ``bench/results/``.
Timing here is information, never pass/fail. ``--quick`` is a short smoke run (tests use it).

Example: python -m bench            # ~10 minutes on 2 CPU cores
         python -m bench --quick    # < 1 minute
"""

from __future__ import annotations

import os

# The same OpenMP wait policy as `featdump extract` (which sets it before torch loads), so the bare
# loops below and the featdump processes run their threads alike; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ... and the same malloc settings (featdump/run/process.py), so the bare loops are not slowed by
# page-faulting their activations afresh each batch: the ceiling is the best the model can do.
from featdump.run.process import tune_malloc

MALLOC = tune_malloc()

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import anysize, codecs, cpubatch, hostpath, inputs, memory, photos, reader, throughput, writer
from bench.images import link_many, make_jpegs

ROOT = Path(__file__).resolve().parent.parent
LITE0_WEIGHTS = ROOT / "weights" / "tf_efficientnet_lite0.safetensors"


def cases(names: list[str]) -> list[throughput.ModelCase]:
    lite0 = str(LITE0_WEIGHTS) if LITE0_WEIGHTS.exists() else None
    known = {
        "resnet50": throughput.ModelCase(
            "resnet50", "resnet50 (all levels, float16)", None, "float16", None,
            ("--compression zstd", "FEATDUMP_ZSTD_LEVEL=1 --compression zstd", "--fast-decode"),
        ),
        "lite0": throughput.ModelCase(
            "tf_efficientnet_lite0", "tf_efficientnet_lite0 (last level, float16)", "-1", "float16", lite0,
            ("--compression zstd", "--fast-decode"),
        ),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"bench: unknown case(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in names]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short smoke run: few images, one repetition")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N [auto]")
    p.add_argument("--images", type=int, default=None, help="JPEGs per throughput run [150; quick 8]")
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions [3; quick 1]")
    p.add_argument("--models", default=None, help="comma list of cases: resnet50,lite0 [both; quick lite0]")
    p.add_argument("--memory-counts", default=None, help="two image counts for peak RSS [200,800; quick 4,12]")
    p.add_argument("--shard-counts", default=None, help="two tar-shard counts for peak RSS [100,400; quick 4,12]")
    p.add_argument(
        "--skip", default="",
        help="comma list of sections to skip: throughput,photos,anysize,cpubatch,codecs,memory,reader,writer,host,inputs",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder [bench/results]")
    return p.parse_args(argv)


def machine(device: Any) -> dict[str, Any]:
    import timm
    import torch

    info: dict[str, Any] = {
        "device": str(device),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "malloc": MALLOC,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --------------------------------------------------------------------------- report


def _f(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    where = m.get("gpu") or m["cpu"]
    lines = [
        f"## featdump bench: {m['device']} ({where}), {m['cpus']} CPUs",
        "",
        f"{report['started']} · torch {m['torch']} · timm {m['timm']} · OMP_WAIT_POLICY={m['omp_wait_policy']} · "
        f"malloc {m.get('malloc', '?')} · "
        f"{report['settings']} · "
        f"load average {report['load_before']} -> {report['load_after']} · {report['seconds']:.0f} s",
        "",
    ]
    cases_ = report.get("throughput", [])
    if cases_:
        lines += ["### Throughput (images/s, medians of interleaved repetitions; startup excluded)", ""]
        head = "| | " + " | ".join(c["label"] for c in cases_) + " |"
        lines += [head, "|---" * (len(cases_) + 1) + "|"]
        variants = [k for c in cases_ for k in c["img_s_median"] if k.startswith("featdump ")]
        variants = list(dict.fromkeys(variants))  # every extra featdump run, in order, once
        rows = [
            ("bare forward, pre-decoded (best config)", "bare forward"),
            ("bare decode + forward, serial", "serial decode + forward"),
            ("naive loop (PIL, bs 1, 1 thread, h5py append)", "naive loop"),
            ("**featdump extract**", "featdump"),
            *[(f"featdump extract {v.removeprefix('featdump ')}", v) for v in variants],
        ]
        for title, key in rows:
            cells = []
            for c in cases_:
                v = c["img_s_median"].get(key)
                cell = "–" if v is None else _f(v)
                if key == "bare forward":
                    cell += f" ({c['best_forward']})"
                if key == "featdump" and c.get("featdump_images"):
                    cell += " ({1} - {0} images)".format(*c["featdump_images"])
                cells.append(cell)
            if any(cell != "–" for cell in cells):
                lines.append(f"| {title} | " + " | ".join(cells) + " |")
        ratio_rows = [
            ("featdump / bare forward", "featdump / bare forward"),
            ("featdump / serial decode + forward", "featdump / serial decode + forward"),
            ("featdump / naive loop", "featdump / naive loop"),
            *[
                (f"featdump {v.removeprefix('featdump ')} / {base}", f"{v} / {base}")
                for v in variants
                for base in ("bare forward", "serial decode + forward")
            ],
        ]
        for title, key in ratio_rows:
            cells = []
            for c in cases_:
                v = c["ratio_median"].get(key)
                spread = c["ratio_all"].get(key, [])
                cells.append("–" if v is None else f"**{v:.2f}×** ({', '.join(f'{x:.2f}' for x in spread)})")
            if any(cell != "–" for cell in cells):
                lines.append(f"| {title} | " + " | ".join(cells) + " |")
        cells = [
            " · ".join(
                f"{k.replace('featdump', '').strip() or 'none'} {v:.2f}"
                for k, v in c["stored_over_raw"].items()
                if k == "featdump" or "compression" in k
            )
            for c in cases_
        ]
        lines.append("| stored / raw bytes | " + " | ".join(cells) + " |")
        lines.append("")
    rows = report.get("codecs")
    if rows:
        src = report.get("codec_source", "")
        lines += [f"### Codecs ({src}; MB/s of raw data written, stored/raw; medians)", ""]
        lines += ["| codec | --compression | float32 MB/s | float32 ratio | float16 MB/s | float16 ratio |"]
        lines += ["|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['codec']} | {r['--compression'] or '–'} | {r['float32_mb_s']:.0f} | {r['float32_ratio']:.2f} | "
                f"{r['float16_mb_s']:.0f} | {r['float16_ratio']:.2f} |"
            )
        lines.append("")
    if report.get("photos"):
        lines += photos.markdown(report["photos"])
    if report.get("cpubatch"):
        lines += cpubatch.markdown(report["cpubatch"])
    if report.get("anysize"):
        lines += anysize.markdown(report["anysize"])
    if report.get("writer"):
        lines += writer.markdown(report["writer"])
    if report.get("host"):
        lines += hostpath.markdown(report["host"])
    if report.get("inputs"):
        lines += inputs.markdown(report["inputs"])
    mem = report.get("memory")
    if mem:
        lines += [f"### Peak RSS ({mem['what']}, each in a fresh process)", ""]
        lines += ["| images | peak RSS (MiB) |", "|---|---|"]
        for n, b in mem["peak_bytes"].items():
            lines.append(f"| {n} | {b / (1 << 20):.0f} |")
        lines.append(f"| ratio (largest / smallest) | **{mem['ratio']:.3f}** |")
        lines.append("")
    rd = report.get("reader")
    if rd:
        lines += [f"### Reader ({rd['what']}; MB/s of stored data)", ""]
        lines += ["| reader | MB/s | / plain h5py |", "|---|---|---|"]
        lines.append(f"| plain h5py, sequential slices | {rd['mb_s']['plain']:.0f} | 1 |")
        for key, ratio in rd["ratio"].items():
            lines.append(f"| DataLoader over .torch(), {key}, collate_fn=ds.collate | {rd['mb_s'][key]:.0f} | **{ratio:.2f}×** |")
        lines.append(f"| (filling fresh shared memory, what workers hand batches over in) | {rd['shm_mb_s']:.0f} | |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    quick = args.quick
    n_images = args.images or (8 if quick else 150)
    reps = args.reps or (1 if quick else 3)
    names = (args.models or ("lite0" if quick else "resnet50,lite0")).split(",")
    counts = [int(x) for x in (args.memory_counts or ("4,12" if quick else "200,800")).split(",")]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    from featdump.run.device import resolve_device

    device = resolve_device(args.device)
    out_dir: Path = args.out
    cache = out_dir / "cache"
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": machine(device),
        "settings": f"{n_images} JPEGs, {reps} repetition(s)" + (", quick" if quick else ""),
        "load_before": load(),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    log(f"bench: {report['machine']['device']} · {report['settings']} · load {report['load_before']}")
    pool = make_jpegs(cache / "jpegs", max(n_images, 160 if not quick else n_images))
    paths = pool[:n_images]

    if "throughput" not in skip:
        report["throughput"] = []
        for case in cases(names):
            log(f"throughput: {case.label}")
            result = throughput.measure_case(case, paths, device, reps, quick, log)
            report["throughput"].append(throughput.summarize(result))

    if "photos" not in skip and device.type == "cpu":
        log("photos: featdump on 0.1-4.5 MP JPEGs, all levels, float16, against the best bare forward")
        report["photos"] = photos.measure(cache, reps, quick, log)

    if "anysize" not in skip and device.type == "cpu":
        log("anysize: --img-size long:L on mixed-aspect photos, batched by shape, against a one-image timm loop")
        report["anysize"] = anysize.measure(cache, 256 if quick else 512, 8 if quick else 64, 8, reps, log)
    if "cpubatch" not in skip and device.type == "cpu":
        log("cpubatch: the bare forward pass per batch size, several models")
        models = ("resnet18",) if quick else cpubatch.MODELS
        report["cpubatch"] = cpubatch.measure(models, (4, 8) if quick else cpubatch.SIZES, 1 if quick else 8,
                                              pool[:16], log)  # fmt: skip

    if "codecs" not in skip:
        log("codecs: resnet50 post-ReLU maps")
        n_codec = 2 if quick else 16
        with throughput.torch_threads(report["machine"]["cpus"] or 1):
            maps = codecs.feature_maps("resnet50", paths, min(n_codec, len(paths)))
        zeros = statistics.mean(float((m == 0).mean()) for m in maps)
        report["codec_source"] = (
            f"resnet50 all levels, {maps[0].shape[0]} real JPEGs, random weights, {zeros:.0%} exact zeros"
        )
        report["codecs"] = codecs.codec_table(maps, reps=1 if quick else 3)
        del maps

    if "writer" not in skip:
        log("writer: Store vs raw write() (resnet50 maps, float16)")
        report["writer"] = writer.writer_table(out_dir.parent if out_dir.exists() else None,
                                               batches=2 if quick else 6, reps=1 if quick else 3)  # fmt: skip

    if "host" not in skip:
        log("host path: null forward (resnet50, lite0 shapes)")
        report["host"] = hostpath.host_table(paths[: (8 if quick else 96)] if len(paths) >= 8 else paths)

    if "memory" not in skip:
        what = "tf_efficientnet_lite0, all levels, float32"
        log(f"memory: {what}, {counts} images")
        peaks: dict[str, int] = {}
        weights = ["--checkpoint", str(LITE0_WEIGHTS)] if LITE0_WEIGHTS.exists() else ["--no-pretrained"]
        dev = "cuda" if device.type == "cuda" else device.type
        for n in counts:
            folder = link_many(cache / f"many-{n}", pool, n)
            peaks[str(n)] = memory.peak_rss(
                "tf_efficientnet_lite0", folder, cache / "rss.h5", ["--device", dev, *weights]
            )
            log(f"  {n} images: peak RSS {peaks[str(n)] / (1 << 20):.0f} MiB")
        report["memory"] = {
            "what": what,
            "peak_bytes": peaks,
            "ratio": peaks[str(counts[-1])] / peaks[str(counts[0])],
        }

    if "reader" not in skip:
        log("reader: DataLoader over .torch() of a merged file vs plain h5py")
        report["reader"] = reader.measure_reader(pool[: 16 if quick else 160], cache, quick, log)
    if "inputs" not in skip:
        case = cases(["lite0"])[0]
        log(f"inputs: folder vs tar shards vs tar shards over HTTP, {case.label}")
        dev = "cuda" if device.type == "cuda" else device.type
        report["inputs"] = inputs.measure(case, paths, dev, reps, cache, log)
        shard_counts = [int(x) for x in (args.shard_counts or ("4,12" if quick else "100,400")).split(",")]
        log(f"inputs: peak RSS over {shard_counts} small tar shards")
        report["inputs"]["memory"] = inputs.shard_memory(
            case.model, pool, shard_counts, cache, ["--device", dev, *case.featdump_args()], log
        )

    report["load_after"] = load()
    report["seconds"] = time.perf_counter() - started
    text = markdown(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report["started"].replace(":", "").replace("-", "")
    tag = f"{stamp}-{device.type}" + ("-quick" if quick else "")
    (out_dir / f"bench-{tag}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"bench-{tag}.md").write_text(text + "\n", encoding="utf-8")
    (out_dir / ("latest-quick.md" if quick else "latest.md")).write_text(text + "\n", encoding="utf-8")
    print(text)
    log(f"saved {out_dir / f'bench-{tag}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
