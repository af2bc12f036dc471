"""Hostile featdump files: forged counters and shard counts, virtual
datasets that read their own file or a foreign one, links and groups where datasets belong.

Every hostile file is made here with h5py from a real (tiny) run; nothing binary is checked in.
Each is refused with one line and exit 2 by ``show``, ``featdump.open``, ``viz`` and ``merge`` (and
``extract --resume``), and none of them changes a byte of it. What used to crash HDF5 (a virtual
dataset reading its own file) runs in a child process, so a crash fails the test instead of pytest.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from conftest import photos_and_a_broken_one, run

ARGS = ("resnet18", "--no-pretrained", "--img-size", "64", "--out-indices", "1,2", "--workers", "0", "--device", "cpu")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished file (3 images, 1 failed) and the two shards of the same run."""
    from typer.testing import CliRunner

    from featdump.cli.commands import app

    root = tmp_path_factory.mktemp("hostile")
    imgs = photos_and_a_broken_one(root / "imgs")
    runner = CliRunner()
    res = runner.invoke(app, ["extract", *ARGS, str(imgs), "-o", str(root / "feats.h5"), "--quiet"])
    assert res.exit_code == 0, res.output
    for i in (0, 1):
        res = runner.invoke(app, ["extract", *ARGS, str(imgs), "-o", str(root / "sh.h5"), "--shard", f"{i}/2", "--quiet"])
        assert res.exit_code == 0, res.output
    with h5py.File(root / "feats.h5", "r") as h5:
        layers = list(h5["features"])
    return {
        "imgs": imgs,
        "file": root / "feats.h5",
        "shards": [root / f"sh.shard-0000{i}-of-00002.h5" for i in (0, 1)],
        "layers": layers,
    }


def hostile(src: Path, dest: Path, edit: Callable[[h5py.File], None]) -> Path:
    """A copy of ``src`` at ``dest``, edited by hand with h5py."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    with h5py.File(dest, "r+") as h5:
        edit(h5)
    return dest


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def one_line(stderr: str, *needles: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featdump: error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_refused_everywhere(cli: Any, path: Path, tmp: Path, *needles: str) -> None:
    """show, show --json, viz, merge and featdump.open: exit 2, one line; nothing written, nothing changed."""
    import featdump
    from featdump.errors import UsageError

    before = fingerprint(path)
    for args in (
        ("show", str(path)),
        ("show", str(path), "--json"),
        ("viz", str(path), "-o", str(tmp / "v.png")),
        ("merge", str(path), "-o", str(tmp / "m.h5")),
    ):
        res = cli(*args)
        assert res.exit_code == 2, (args, res.output)
        one_line(res.stderr, *needles)
        assert res.stdout == ""
    with pytest.raises(UsageError) as info, featdump.open(path) as f:
        f.numpy(f.layers[0])
    for needle in needles:
        assert needle in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp / "v.png").exists() and not (tmp / "m.h5").exists()
    assert fingerprint(path) == before


# --------------------------------------------------------------------------- item 7: counters


def _set(key: str, value: Any) -> Callable[[h5py.File], None]:
    def edit(h5: h5py.File) -> None:
        h5.attrs[key] = value

    return edit


def _paths_shorter(h5: h5py.File) -> None:
    h5["paths"].resize(1, axis=0)


def _grown(h5: h5py.File) -> None:
    """Every dataset resized to 1000 rows and the counters to match: the shapes agree, the rows were never written."""
    grown = [*h5["features"].values(), h5["paths"], *(h5[k] for k in ("ids", "geometry") if k in h5)]
    for ds in grown:
        ds.resize(1000, axis=0)
    h5.attrs["num_images"] = 1000


COUNTERS = {
    "num_images=1000": (_set("num_images", 1000), "num_images is 1000 but /paths holds 3 rows"),
    "num_images=3.7": (_set("num_images", 3.7), "num_images is 3.7, not a whole number"),
    "num_images=2**62": (_set("num_images", 2**62), f"num_images is {2**62} but /paths holds 3 rows"),
    "num_images=-5": (_set("num_images", -5), "num_images is -5, a negative count"),
    "num_images=True": (_set("num_images", True), "num_images is True, not a whole number"),
    "num_images='3'": (_set("num_images", "3"), "num_images is '3', not a whole number"),
    "num_failed=5": (_set("num_failed", 5), "num_failed is 5 but /failed/paths holds 1 rows"),
    "inputs_done=1": (_set("inputs_done", 1), "inputs_done is 1, fewer than num_images + num_failed (3 + 1)"),
    "inputs_done=99": (_set("inputs_done", 99), "inputs_done is 99 but num_inputs is 4"),
    "paths shorter": (_paths_shorter, "num_images is 3 but /paths holds 1 rows"),
    "rows never written": (_grown, "has storage for fewer rows (the rest were never written)"),
    "shard [5, 3]": (_set("shard", np.array([5, 3])), "shard is [5, 3], out of range"),
    "shard [0.5, 2]": (_set("shard", np.array([0.5, 2.0])), "shard is [0.5, 2.0], not [I, N]"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(COUNTERS))
def test_counters_that_disagree_are_refused(cli, base: dict[str, Any], tmp_path: Path, case: str) -> None:
    edit, message = COUNTERS[case]
    path = hostile(base["file"], tmp_path / "in" / "feats.h5", edit)
    assert_refused_everywhere(cli, path, tmp_path, "is inconsistent", message)


def test_a_later_format_version_is_refused_everywhere(cli, base: dict[str, Any], tmp_path: Path) -> None:
    path = hostile(base["file"], tmp_path / "in" / "feats.h5", _set("format_version", 99))
    assert_refused_everywhere(cli, path, tmp_path, "has format_version 99; this featdump", "reads 1 and 2: upgrade it")


@pytest.mark.parametrize("case", ["num_images=1000", "num_images=3.7", "num_images=-5", "rows never written"])
def test_resume_refuses_forged_counters_and_leaves_the_file_alone(cli, base: dict[str, Any], tmp_path: Path, case: str) -> None:
    """Was: ``--resume`` "completed" with 990 rows of zeros (exit 0)."""
    edit, message = COUNTERS[case]

    def unfinished(h5: h5py.File) -> None:
        h5.attrs["complete"] = False
        edit(h5)

    path = hostile(base["file"], tmp_path / "feats.h5", unfinished)
    before = fingerprint(path)
    res = cli("extract", *ARGS, str(base["imgs"]), "-o", str(path), "--resume", "--quiet")
    assert res.exit_code == 2, res.output
    one_line(res.stderr, "is inconsistent", message)
    assert fingerprint(path) == before


def test_an_honest_file_still_passes(cli, base: dict[str, Any]) -> None:
    import featdump

    info = json.loads(cli("show", str(base["file"]), "--json").stdout)
    assert (info["num_images"], info["num_failed"], info["inputs_done"]) == (3, 1, 4)
    with featdump.open(base["file"]) as f:
        assert len(f.paths) == 3 and len(f.failed) == 1 and f.numpy(f.layers[0]).shape[0] == 3


# --------------------------------------------------------------------------- item 5: shard counts


def _limited() -> None:  # the child may not grow past 4 GiB (the forged count used to take 23.5 GB)
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.slow
def test_merge_with_a_forged_shard_count_is_refused_at_once(base: dict[str, Any], tmp_path: Path) -> None:
    s0 = hostile(base["shards"][0], tmp_path / base["shards"][0].name, _set("shard", np.array([0, 10**12])))
    s1 = tmp_path / base["shards"][1].name
    shutil.copy(base["shards"][1], s1)
    before = fingerprint(s0)
    proc = run("merge", str(s0), str(s1), "-o", str(tmp_path / "m.h5"), timeout=120, preexec_fn=_limited)
    assert proc.returncode == 2, proc.stderr
    one_line(proc.stderr, f"is shard 1 of 2, but {s0} is of {10**12}")
    # both forged alike: the count is believed, and the missing shards are counted, not listed
    with h5py.File(s1, "r+") as h5:
        h5.attrs["shard"] = np.array([1, 10**12])
    proc = run("merge", str(s0), str(s1), "-o", str(tmp_path / "m.h5"), timeout=120, preexec_fn=_limited)
    assert proc.returncode == 2, proc.stderr
    one_line(proc.stderr, f"shard 2 of {10**12} is missing", f"and {10**12 - 3} more: 3, 4, 5, 6, 7...")
    assert not (tmp_path / "m.h5").exists() and fingerprint(s0)[0] == before[0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([0, -2]), "shard is [0, -2], out of range"),
        (np.array([2, 2]), "shard is [2, 2], out of range"),
        (np.array([0, 1, 2]), "shard is [0, 1, 2], not [I, N]"),
        ("0/2", "shard is '0/2', not [I, N]"),
    ],
)
def test_merge_refuses_shard_attributes_out_of_range(cli, base: dict[str, Any], tmp_path: Path, value: Any, message: str) -> None:
    s0 = hostile(base["shards"][0], tmp_path / base["shards"][0].name, _set("shard", value))
    res = cli("merge", str(s0), str(base["shards"][1]), "-o", str(tmp_path / "m.h5"))
    assert res.exit_code == 2, res.output
    one_line(res.stderr, message)


def test_merge_refuses_forged_shard_counters(cli, base: dict[str, Any], tmp_path: Path) -> None:
    s0 = hostile(base["shards"][0], tmp_path / base["shards"][0].name, _set("num_images", 10**9))
    res = cli("merge", str(s0), str(base["shards"][1]), "-o", str(tmp_path / "m.h5"), "--copy")
    assert res.exit_code == 2, res.output
    one_line(res.stderr, f"{s0} is inconsistent: num_images is 1000000000 but /paths holds")


# --------------------------------------------------------------------------- item 6: virtual sources


def make_virtual(src: Path, dest: Path, layer: str, source: str) -> Path:
    """A copy of the featdump file ``src`` whose ``layer`` is a virtual dataset reading ``source``."""

    def edit(h5: h5py.File) -> None:
        ds = h5["features"][layer]
        shape, dtype = ds.shape, ds.dtype
        del h5["features"][layer]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(source, f"features/{layer}", shape=shape)
        h5["features"].create_virtual_dataset(layer, layout, fillvalue=np.nan)

    return hostile(src, dest, edit)


# Runs every reader on one file in a child process: a crash (SIGSEGV) shows as a negative return code.
READERS = r"""
import json, sys
from typer.testing import CliRunner
import featdump
from featdump.cli.commands import app
from featdump.errors import FeatdumpError

path, tmp = sys.argv[1], sys.argv[2]
runner, out = CliRunner(), {}
for name, args in {
    "show": ["show", path],
    "viz": ["viz", path, "-o", tmp + "/v.png"],
    "merge": ["merge", path, "-o", tmp + "/m.h5"],
}.items():
    res = runner.invoke(app, args, catch_exceptions=False)
    out[name] = [res.exit_code, res.stderr]
try:
    with featdump.open(path) as f:
        f.numpy(f.layers[0])
    out["open"] = [0, ""]
except FeatdumpError as exc:
    out["open"] = [exc.exit_code, "featdump: error: " + str(exc)]
print(json.dumps(out))
"""


def readers_in_a_child(path: Path, tmp: Path, env: dict[str, str] | None = None) -> dict[str, list[Any]]:
    full = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", READERS, str(path), str(tmp)],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"readers crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_refused_in_a_child(path: Path, tmp: Path, *needles: str, env: dict[str, str] | None = None) -> None:
    before = fingerprint(path)
    results = readers_in_a_child(path, tmp, env)
    for name, (code, stderr) in results.items():
        assert code == 2, (name, stderr)
        one_line(stderr, *needles)
    assert not (tmp / "v.png").exists() and not (tmp / "m.h5").exists()
    assert fingerprint(path) == before


@pytest.mark.slow
def test_self_reference_is_refused_not_a_crash(base: dict[str, Any], tmp_path: Path) -> None:
    """Was: SIGSEGV in viz and featdump.open(...).numpy(); show said the file was fine. The real command."""
    layer = base["layers"][0]
    path = make_virtual(base["file"], tmp_path / "in" / "self.h5", layer, "self.h5")
    before = fingerprint(path)
    for args in (("show", str(path)), ("viz", str(path), "-o", str(tmp_path / "v.png")), ("merge", str(path), "-o", str(tmp_path / "m.h5"))):
        proc = run(*args, timeout=300)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        one_line(proc.stderr)
    assert "the file itself" in run("show", str(path)).stderr
    assert fingerprint(path) == before


@pytest.mark.slow
@pytest.mark.parametrize("how", ["name", "dot", "absolute", "symlink", "prefix"])
def test_every_spelling_of_a_self_reference_is_refused(base: dict[str, Any], tmp_path: Path, how: str) -> None:
    layer = base["layers"][-1]
    folder = tmp_path / "in"
    folder.mkdir()
    target = folder / "v.h5"
    env = None
    source = {"name": "v.h5", "dot": ".", "absolute": str(target), "symlink": "alias.h5", "prefix": "hidden.h5"}[how]
    if how == "symlink":
        (folder / "alias.h5").symlink_to(target)
    if how == "prefix":  # HDF5 looks under HDF5_VDS_PREFIX (${ORIGIN}: the virtual file's folder) first
        (folder / "sub").mkdir()
        (folder / "sub" / "hidden.h5").symlink_to(target)
        env = {"HDF5_VDS_PREFIX": "${ORIGIN}/sub"}
    make_virtual(base["file"], target, layer, source)
    assert_refused_in_a_child(target, tmp_path, "refusing to read its virtual dataset", "the file itself", env=env)


@pytest.mark.slow
def test_sources_that_are_not_featdump_shards_are_refused(base: dict[str, Any], tmp_path: Path) -> None:
    layer = base["layers"][0]
    folder = tmp_path / "in"
    folder.mkdir()
    cases = {"/etc/passwd": "not an HDF5 file"}
    plain = folder / "plain.h5"  # HDF5, but not featdump
    with h5py.File(plain, "w") as h5:
        h5.create_dataset(f"features/{layer}", data=np.ones((3, 4), dtype=np.float32))
    cases[str(plain)] = 'not a featdump file (no format="featdump" attribute)'
    # a featdump file whose dataset is itself virtual (here: back to the first): a cycle, refused
    make_virtual(base["file"], folder / "b.h5", layer, "a.h5")
    cases["b.h5"] = f"features/{layer} is itself virtual"
    forged = hostile(base["file"], folder / "forged.h5", _set("num_images", 1000))
    cases[str(forged)] = "not a valid featdump shard"
    for source, why in cases.items():
        path = make_virtual(base["file"], folder / "a.h5", layer, source)
        assert_refused_in_a_child(path, tmp_path, "refusing to read its virtual dataset", why)


def test_a_real_merge_still_reads(cli, base: dict[str, Any], tmp_path: Path) -> None:
    import featdump

    shards = []
    for s in base["shards"]:
        shutil.copy(s, tmp_path / s.name)
        shards.append(str(tmp_path / s.name))
    assert cli("merge", *shards, "-o", str(tmp_path / "all.h5"), "--quiet").exit_code == 0
    assert cli("show", str(tmp_path / "all.h5")).exit_code == 0
    with featdump.open(tmp_path / "all.h5") as merged, featdump.open(base["file"]) as single:
        assert merged.paths == single.paths
        np.testing.assert_allclose(merged.numpy(merged.layers[0]), single.numpy(single.layers[0]), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- item 11: layout


def _soft(h5: h5py.File) -> None:
    h5["features"]["ghost"] = h5py.SoftLink("/nowhere")


def _external(h5: h5py.File) -> None:
    h5["features"]["ghost"] = h5py.ExternalLink("/nonexistent/other.h5", "/features/x")


def _group(h5: h5py.File) -> None:
    h5["features"].create_group("ghost")


def _no_failed(h5: h5py.File) -> None:
    del h5["failed"]


def _paths_group(h5: h5py.File) -> None:
    del h5["paths"]
    h5.create_group("paths")


LAYOUT = {
    "dangling soft link": (_soft, "/features/ghost is a soft link, not a dataset"),
    "dangling external link": (_external, "/features/ghost is an external link, not a dataset"),
    "group under /features": (_group, "/features/ghost is a group, not a dataset"),
    "no /failed": (_no_failed, "it has no /failed group"),
    "/paths a group": (_paths_group, "/paths is a group, not a dataset"),
}


@pytest.mark.parametrize("case", list(LAYOUT))
def test_broken_layout_is_one_line(cli, base: dict[str, Any], tmp_path: Path, case: str) -> None:
    edit, message = LAYOUT[case]
    path = hostile(base["file"], tmp_path / "in" / "feats.h5", edit)
    assert_refused_everywhere(cli, path, tmp_path, "is not a valid featdump file", message)


def test_non_utf8_names_read_as_backslash_escapes(cli, base: dict[str, Any], tmp_path: Path) -> None:
    """docs/safety.md: undecodable bytes are stored as \\xHH; a file holding raw bytes reads the same way."""
    import featdump

    def edit(h5: h5py.File) -> None:
        raw = h5["paths"][:]
        raw[0] = b"caf\xe9.jpg"
        h5["paths"][:] = raw
        h5["failed/paths"][0] = b"\xff\xfe.jpg"

    path = hostile(base["file"], tmp_path / "in" / "feats.h5", edit)
    before = fingerprint(path)
    with featdump.open(path) as f:
        assert f.paths[0] == "caf\\xe9.jpg"
        assert f.row("caf\\xe9.jpg") == 0
        assert f.failed[0][0] == "\\xff\\xfe.jpg"
    res = cli("show", str(path), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["failures"][0]["path"] == "\\xff\\xfe.jpg"
    assert fingerprint(path) == before
    # merge --copy writes them as valid UTF-8 (the \xHH text)
    res = cli("merge", str(path), "-o", str(tmp_path / "m.h5"), "--copy", "--quiet")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "m.h5", "r") as h5:
        assert h5["paths"].asstr()[0] == "caf\\xe9.jpg"


@pytest.mark.parametrize("name", ["..", "a\x01b"])
def test_layer_names_that_are_not_one_path_component_are_refused_by_every_reader(
    cli, base: dict[str, Any], tmp_path: Path, name: str
) -> None:
    """A layer named `..`: export would make a folder of it (`..` wrote beside -o)."""
    import featdump
    from featdump.errors import UsageError

    def rename(h5: h5py.File) -> None:
        h5["features"].move(base["layers"][0], name)

    path = hostile(base["file"], tmp_path / "in" / "feats.h5", rename)
    assert_refused_everywhere(cli, path, tmp_path, "layer name", "not one file name")
    for args in (("verify", str(path)), ("export", str(path), "-o", str(tmp_path / "out"), "--pool", "avg")):
        res = cli(*args)
        assert res.exit_code == 2, (args, res.output)
        one_line(res.stderr, "layer name")
    assert not (tmp_path / "out").exists() and not (tmp_path / "in" / "emb").exists()
    with pytest.raises(UsageError, match="not one file name"):
        featdump.open(path).torch()
