"""Helpers for the cluster tests (sharding, merge, torchrun, Slurm): tiny images and file comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Settings every merged file shares with a single run over the same input (created/command differ).
SAME_ATTRS = (
    "format", "format_version", "model", "weights", "input_size", "mean", "std", "interpolation", "crop_pct",
    "crop_mode", "out_indices", "layers", "output_stride", "pool", "dtype", "num_images", "num_failed", "complete",
    "num_inputs", "input_digest", "list_digest", "list_size", "shard",
)  # fmt: skip

FAST = ("--img-size", "64", "--workers", "0", "--batch-size", "3", "--quiet", "--device", "cpu")


def make_images(folder: Path, count: int, broken: tuple[int, ...] = ()) -> Path:
    """``count`` small, different RGB images in two sub-folders; positions in ``broken`` are not images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:03d}.png"
        if i in broken:
            path.write_bytes(b"not an image at all")
        else:
            h, w = 40 + 3 * i, 56 - 2 * (i % 5)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return folder


def read(path: Path) -> dict[str, Any]:
    """Everything a reader sees: attrs, paths, failures and every feature array."""
    import h5py

    from featdump.store.format import read_attr

    with h5py.File(path, "r") as h5:
        return {
            "attrs": {k: read_attr(v) for k, v in h5.attrs.items()},
            "paths": h5["paths"].asstr()[:].tolist(),
            "failed": h5["failed/paths"].asstr()[:].tolist(),
            "errors": h5["failed/errors"].asstr()[:].tolist(),
            # the inputs' ids (tar shards, --id-column); None when the inputs have none
            "ids": h5["ids"].asstr()[:].tolist() if "ids" in h5 else None,
            "failed_ids": h5["failed/ids"].asstr()[:].tolist() if "ids" in h5["failed"] else None,
            "features": {name: ds[:] for name, ds in h5["features"].items()},
            "layer_attrs": {name: {k: read_attr(v) for k, v in ds.attrs.items()} for name, ds in h5["features"].items()},
        }


def assert_same_as_single(merged: Path, single: Path) -> None:
    """The merged file holds what one run over everything holds: same rows, same order, same values.

    Values agree to float rounding, not bit for bit: a CPU convolution may sum in another order when
    the batch holds other images or the process has another thread count. That merge itself changes
    no bit is checked by :func:`assert_rows_of_shards`.
    """
    import numpy as np

    m, s = read(merged), read(single)
    assert m["paths"] == s["paths"]
    assert m["ids"] == s["ids"]
    assert m["failed"] == s["failed"]
    assert m["failed_ids"] == s["failed_ids"]
    assert m["errors"] == s["errors"]
    assert list(m["features"]) == list(s["features"])
    for name, want in s["features"].items():
        got = m["features"][name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert m["layer_attrs"] == s["layer_attrs"]
    for key in SAME_ATTRS:
        if key == "input_digest" and s["attrs"].get("input_kind") == "tar":
            continue  # one run's covers the tar files' identity (size, mtime, head), a merge records the list digest
        assert m["attrs"].get(key) == s["attrs"].get(key), key


def assert_rows_of_shards(merged: Path, shards: list[Path]) -> None:
    """Every merged row (path, id, features) is the shard's row, bit for bit, shards in index order."""
    import numpy as np

    m = read(merged)
    parts = [read(p) for p in shards]
    assert m["paths"] == [p for part in parts for p in part["paths"]]
    if m["ids"] is not None:
        assert m["ids"] == [i for part in parts for i in part["ids"]]
    for name, got in m["features"].items():
        np.testing.assert_array_equal(got, np.concatenate([part["features"][name] for part in parts]), err_msg=name)
