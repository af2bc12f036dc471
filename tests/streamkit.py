"""Helpers for the tar-shard and table tests: the same images as a folder, as WebDataset shards
(written by ``webdataset.TarWriter`` or by hand with ``tarfile``) and as a Parquet table of bytes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from faultkit import FAST, MODEL, make_images


def images_in_order(folder: Path) -> list[Path]:
    """A folder's images in featdump's row order (sorted by stored path)."""
    return sorted((p for p in folder.rglob("*.png")), key=lambda p: p.relative_to(folder).as_posix())


def key_of(folder: Path, path: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix().replace("/", "_")


def write_shards(folder: Path, out: Path, per_shard: int, *, extra: bool = True) -> list[Path]:
    """The folder's images, in row order, as WebDataset shards ``out/data-000000.tar`` ...
    (TarWriter: ``KEY.png`` + ``KEY.cls`` per sample, the cls its row number)."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    paths = images_in_order(folder)
    shards = []
    for s in range(0, len(paths), per_shard):
        name = out / f"data-{s // per_shard:06d}.tar"
        with wds.TarWriter(str(name)) as sink:
            for row, p in enumerate(paths[s : s + per_shard], s):
                sample = {"__key__": key_of(folder, p), "png": p.read_bytes()}
                if extra:
                    sample["cls"] = str(row).encode()
                sink.write(sample)
        shards.append(name)
    return shards


def hand_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    """A tar written with ``tarfile``: ``(name, data)`` members in order (``name/`` for a folder)."""
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                continue
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_parquet(folder: Path, out: Path, *, struct: bool = True, row_group_size: int = 5) -> Path:
    """The folder's images, in row order, as a Parquet table: ``image`` ({bytes, path} struct as
    Hugging Face writes it, or plain binary), ``id`` and ``label`` columns; small row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = images_in_order(folder)
    data = [p.read_bytes() for p in paths]
    if struct:
        image = pa.array([{"bytes": d, "path": p.relative_to(folder).as_posix()} for d, p in zip(data, paths, strict=True)])
    else:
        image = pa.array(data, type=pa.binary())
    table = pa.table({"image": image, "id": [key_of(folder, p) for p in paths], "label": list(range(len(paths)))})
    pq.write_table(table, out, row_group_size=row_group_size)
    return out


def argv(inputs: list[str] | str, out: Path, ckpt: Path, *extra: str, model: str = MODEL) -> list[str]:
    inputs = [inputs] if isinstance(inputs, str) else inputs
    return ["extract", model, *inputs, "-o", str(out), "--checkpoint", str(ckpt), *FAST, *extra]


def extract_in_worker_processes(inputs: str, out: Path, ckpt: Path, **options: Any) -> str:
    """``extract`` (argv's options, 2 decoding workers) with the GPU path's DataLoader worker
    processes, on this CPU and in this process: the run's one-line error ("" when it succeeds)."""
    from functools import partial

    from featdump.configure import resolve
    from featdump.data.batching import Loader
    from featdump.errors import FeatdumpError
    from featdump.run.job import Stages, run_extraction
    from featdump.run.results import end_of_run

    given = {"model": MODEL, "inputs": (inputs,), "output": str(out), "checkpoint": str(ckpt), "img_size": "64"}
    given.update(batch_size=4, device="cpu", quiet=True, workers=2, **options)
    try:
        end_of_run(run_extraction(resolve(given), stages=Stages(loader=partial(Loader, processes=True))), strict=False)
    except FeatdumpError as exc:
        return str(exc)
    return ""


def features(path: Path) -> dict[str, Any]:
    """Committed rows of a file: paths, ids, failures and feature arrays."""
    import h5py

    with h5py.File(path, "r") as f:
        n, m = int(f.attrs["num_images"]), int(f.attrs["num_failed"])
        out = {
            "attrs": dict(f.attrs),
            "paths": [p.decode() for p in f["paths"][:n]],
            "ids": [p.decode() for p in f["ids"][:n]] if "ids" in f else None,
            "failed": [p.decode() for p in f["failed/paths"][:m]],
            "errors": [p.decode() for p in f["failed/errors"][:m]],
            "failed_ids": [p.decode() for p in f["failed/ids"][:m]] if "ids" in f["failed"] else None,
            "features": {k: np.asarray(f["features"][k][:n]) for k in f["features"]},
        }
    return out


def assert_same_features(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a["features"]) == list(b["features"])
    for name in a["features"]:
        x, y = a["features"][name], b["features"][name]
        assert x.shape == y.shape, name
        assert np.array_equal(x, y), name


__all__ = ["make_images"]
