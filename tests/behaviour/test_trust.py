"""Issue 16: verify, --like, disk planning, processors (each compared with timm's own outputs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import PHOTOS, run, timm_features

NAMES = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in NAMES:
        shutil.copy(PHOTOS / n, folder / n)
    return folder


def _extract(ckpt: Path, imgs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("extract", "resnet18", str(imgs), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "-q", *extra)


# --------------------------------------------------------------------------- processors


def _stored(path: Path) -> dict[str, np.ndarray]:
    import featdump

    with featdump.open(path) as f:
        return {name: f.numpy(name) for name in f.layers}


@pytest.mark.slow
def test_processors_equal_timm_by_hand(tmp_path, imgs, random_checkpoint):
    import torch
    import torch.nn.functional as F

    ckpt = random_checkpoint("resnet18")
    ref = timm_features("resnet18", ckpt, [imgs / n for n in NAMES], out_indices=(1, 2))
    basis = tmp_path / "basis.npz"
    rng = np.random.default_rng(0)
    mean, comp = rng.normal(size=128).astype(np.float32), rng.normal(size=(6, 128)).astype(np.float32)
    np.savez(basis, mean=mean, components=comp)

    out = tmp_path / "l2.h5"
    _extract(ckpt, imgs, out, "--out-indices", "1,2", "--process", "resize:stride=8", "--process", "l2norm").check_returncode()
    got = _stored(out)
    for name, r in zip(["layer1", "layer2"], ref, strict=True):
        want = F.normalize(F.interpolate(torch.from_numpy(r), size=(28, 28), mode="bilinear", align_corners=False), dim=1)
        np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-4, atol=1e-5)
    import h5py

    with h5py.File(out, "r") as h5:  # the stride of the stored grid, not the module's (4 and 8)
        assert [h5[f"features/{n}"].attrs["reduction"] for n in ("layer1", "layer2")] == [8, 8]

    out = tmp_path / "pca.h5"
    p = _extract(ckpt, imgs, out, "--out-indices", "2", "--process", f"pca:4:{basis}", "--process", "resize:14x21")
    assert p.returncode == 0, p.stderr
    x = torch.from_numpy(ref[1]).permute(0, 2, 3, 1) - torch.from_numpy(mean)
    want = F.interpolate((x @ torch.from_numpy(comp[:4]).T).permute(0, 3, 1, 2), size=(14, 21), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(_stored(out)["layer2"], want.numpy(), rtol=1e-4, atol=1e-4)
    with h5py.File(out, "r") as h5:
        assert h5["features/layer2"].attrs["reduction"] == 16  # input rows per cell row: 224 / 14

    out = tmp_path / "pooled.h5"
    _extract(ckpt, imgs, out, "--out-indices", "2", "--pool", "avg", "--process", "l2norm").check_returncode()
    want = F.normalize(torch.from_numpy(ref[1]).mean(dim=(2, 3)), dim=1)
    np.testing.assert_allclose(_stored(out)["layer2"], want.numpy(), rtol=1e-5, atol=1e-6)
    import featdump

    with featdump.open(out) as f:
        assert f.meta["process"] == ["l2norm"]

    p = run("inspect", "resnet18", "--out-indices", "2", "--process", f"pca:4:{basis}", "--json")
    assert json.loads(p.stdout)["layers"][0]["shape"] == [4, 28, 28]


@pytest.mark.slow
def test_processor_errors(tmp_path, imgs):
    p = run("extract", "resnet18", str(imgs), "-o", str(tmp_path / "o.h5"), "--no-pretrained", "--process", "sharpen")
    assert p.returncode == 2
    assert "no such processor installed" in p.stderr and "pip install featdump-sharpen" in p.stderr
    assert not (tmp_path / "o.h5").exists()
    p = run("extract", "resnet18", str(imgs), "-o", str(tmp_path / "o.h5"), "--no-pretrained", "--process", "resize:big")
    assert p.returncode == 2 and "resize:HxW" in p.stderr


PLUGIN = '''
import torch

class Double:
    """Doubles every value (a test plug-in)."""

    def __init__(self, *args):
        self.factor = float(args[0]) if args else 2.0

    def output_shape(self, shape):
        return shape

    def __call__(self, x):
        return x * self.factor
'''


@pytest.mark.slow
def test_entry_point_plugin(tmp_path, imgs, random_checkpoint):
    site = tmp_path / "site"
    site.mkdir()
    (site / "fd_double.py").write_text(PLUGIN)
    dist = site / "fd_double-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fd-double\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[featdump.processors]\ndouble = fd_double:Double\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    p = run("processors", "--json", env=env)
    assert {"name": "double", "source": "fd-double", "target": "fd_double:Double", "doc": ""} in json.loads(p.stdout)
    ckpt = random_checkpoint("resnet18")
    base, doubled = tmp_path / "a.h5", tmp_path / "b.h5"
    run("extract", "resnet18", str(imgs), "-o", str(base), "--checkpoint", str(ckpt), "-q", "--out-indices", "1", env=env, check=True)
    run("extract", "resnet18", str(imgs), "-o", str(doubled), "--checkpoint", str(ckpt), "-q", "--out-indices", "1",
        "--process", "double:3", env=env, check=True)  # fmt: skip
    np.testing.assert_allclose(_stored(doubled)["layer1"], 3 * _stored(base)["layer1"], rtol=1e-6)
    p = run("verify", str(doubled), "-n", "2", env=env)
    assert p.returncode == 0, p.stderr
    p = run("verify", str(doubled), "-n", "2")  # without the plug-in installed
    assert p.returncode == 2 and "double" in p.stderr


# --------------------------------------------------------------------------- verify


@pytest.mark.slow
def test_verify_pass_fail_and_cannot(tmp_path, imgs, random_checkpoint):
    import h5py

    ckpt = tmp_path / "r18.safetensors"
    shutil.copy(random_checkpoint("resnet18"), ckpt)
    out = tmp_path / "f.h5"
    _extract(ckpt, imgs, out, "--out-indices", "1,-1").check_returncode()
    p = run("verify", str(out), "-n", "3", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["ok"] and len(report["rows"]) == 3 and [l["name"] for l in report["layers"]] == ["layer1", "layer4"]
    assert all(l["min_cos"] > 0.99999 for l in report["layers"])

    bad = tmp_path / "bad.h5"
    shutil.copy(out, bad)
    with h5py.File(bad, "r+") as h5:
        h5["features/layer4"][2] = h5["features/layer4"][2] * 1.5
    p = run("verify", str(bad), "-n", "4")
    assert p.returncode == 1 and "2 (" in p.stderr and "coffee.jpg" in p.stderr, p.stderr

    ckpt.write_bytes(ckpt.read_bytes()[:-8] + b"\0" * 8)  # same size, other bytes
    p = run("verify", str(out))
    assert p.returncode == 2 and "sha256" in p.stderr and "changed" in p.stderr
    ckpt.unlink()
    p = run("verify", str(out))
    assert p.returncode == 2 and "is gone" in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,extra",
    [
        ("vit_tiny_patch16_224", ["--layers", "blocks.1"]),
        ("resnet18", ["--out-indices", "2", "--pool", "avg", "--dtype", "float16"]),
        ("resnet18", ["--out-indices", "3", "--precision", "bf16", "--process", "l2norm"]),
    ],
)
def test_verify_kinds(tmp_path, imgs, model, extra):
    out = tmp_path / "f.h5"
    run("extract", model, str(imgs), "-o", str(out), "--no-pretrained", "-q", "--device", "cpu", *extra, check=True)
    p = run("verify", str(out), "-n", "2", "--device", "cpu")
    assert p.returncode == 0, p.stderr + p.stdout


@pytest.mark.slow
def test_verify_input_gone_and_shards(tmp_path, imgs):
    out = tmp_path / "f.h5"
    run("extract", "resnet18", str(imgs), "-o", str(out), "--no-pretrained", "-q", "--out-indices", "1", "--shard", "1/2", check=True)
    shard = tmp_path / "f.shard-00001-of-00002.h5"
    run("extract", "resnet18", str(imgs), "-o", str(out), "--no-pretrained", "-q", "--out-indices", "1", "--shard", "0/2", check=True)
    run("merge", str(tmp_path / "f.shard-00000-of-00002.h5"), str(shard), "-o", str(tmp_path / "all.h5"), check=True)
    assert run("verify", str(tmp_path / "all.h5"), "-n", "4").returncode == 0
    assert run("verify", str(shard)).returncode == 0
    (imgs / "rocket.jpg").unlink()
    p = run("verify", str(shard))
    assert p.returncode == 2 and "rocket.jpg is gone" in p.stderr


# --------------------------------------------------------------------------- verify: tar shards, tables, URLs


@pytest.fixture
def stream_inputs(tmp_path: Path, random_checkpoint) -> dict:
    """6 small PNGs (the third broken: a /failed record) as 3 WebDataset shards of 2 and as a folder."""
    from streamkit import make_images, write_shards

    images = make_images(tmp_path / "images", 6, seed=5, broken=(2,))
    return {"images": images, "shards": write_shards(images, tmp_path / "shards", per_shard=2),
            "ckpt": random_checkpoint("resnet18")}  # fmt: skip


def _stream_extract(inputs: str, out: Path, ckpt: Path, *extra: str) -> None:
    from streamkit import argv

    p = run(*argv(inputs, out, ckpt, "--out-indices", "1,3", *extra))
    assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_verify_tar_shards_their_merge_a_changed_row_and_a_gone_shard(tmp_path, stream_inputs):
    """Rows of tar shards are re-read from their shards: a whole run, its 2 shard files merged; a row
    changed by hand is named (exit 1), a deleted shard too (exit 2)."""
    import h5py

    pattern, ckpt = str(tmp_path / "shards" / "data-{000000..000002}.tar"), stream_inputs["ckpt"]
    whole = tmp_path / "t.h5"
    _stream_extract(pattern, whole, ckpt)
    for i in (0, 1):
        _stream_extract(pattern, tmp_path / "s.h5", ckpt, "--shard", f"{i}/2")
    parts = [tmp_path / f"s.shard-0000{i}-of-00002.h5" for i in (0, 1)]
    merged = tmp_path / "merged.h5"
    run("merge", *map(str, parts), "-o", str(merged), "-q", check=True)
    for f, rows in ((whole, 5), (merged, 5), (parts[1], 2)):  # 5 rows: the broken image is in /failed
        p = run("verify", str(f), "-n", "5", "--json")
        assert p.returncode == 0, f"{f.name}: {p.stderr}"
        report = json.loads(p.stdout)
        assert report["rows"] == list(range(rows)) and all(layer["max_rel"] < 1e-5 for layer in report["layers"])

    bad = tmp_path / "bad.h5"
    shutil.copy(whole, bad)
    with h5py.File(bad, "r+") as h5:
        changed = h5["paths"][3].decode()
        h5["features/layer3"][3] = h5["features/layer3"][3] * 1.5
    assert changed.startswith(str(tmp_path / "shards" / "data-000002.tar") + "/")  # row 3: the third shard
    p = run("verify", str(bad), "-n", "5")
    assert p.returncode == 1 and f"3 ({changed})" in p.stderr, p.stderr

    gone = tmp_path / "shards" / "data-000002.tar"
    gone.unlink()
    p = run("verify", str(whole), "-n", "5")
    assert p.returncode == 2 and f"tar shard not found: {gone}" in p.stderr, p.stderr
    assert run("verify", str(parts[0]), "-n", "5").returncode == 0  # its shards are all there


@pytest.mark.slow
def test_verify_parquet_image_bytes_and_a_csv_of_paths(tmp_path, stream_inputs):
    from streamkit import images_in_order, write_parquet

    images, ckpt = stream_inputs["images"], stream_inputs["ckpt"]
    table = write_parquet(images, tmp_path / "hf.parquet", struct=True, row_group_size=2)
    out = tmp_path / "pq.h5"
    _stream_extract(str(table), out, ckpt, "--image-column", "image", "--id-column", "id")
    p = run("verify", str(out), "-n", "5")
    assert p.returncode == 0, p.stderr

    rels = [q.relative_to(images).as_posix() for q in images_in_order(images)]
    csv = images / "list.csv"  # paths relative to the table's folder, one of them twice and one missing
    csv.write_text("label,path\n" + "".join(f"{i},{r}\n" for i, r in enumerate([*rels, "gone.png", rels[0]])))
    out = tmp_path / "csv.h5"
    _stream_extract(str(csv), out, ckpt)
    p = run("verify", str(out), "-n", "6", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["paths"][-1] == rels[0]
    csv.unlink()
    p = run("verify", str(out), "-n", "6")
    assert p.returncode == 2 and f"input not found: {csv}" in p.stderr, p.stderr


@pytest.mark.slow
def test_verify_tar_shards_over_http(tmp_path, stream_inputs):
    from servers import http_server

    server = http_server(tmp_path / "shards")
    try:
        out = tmp_path / "http.h5"
        _stream_extract(f"{server.url}/data-{{000000..000002}}.tar", out, stream_inputs["ckpt"])
        p = run("verify", str(out), "-n", "5")
        assert p.returncode == 0, p.stderr
        (tmp_path / "shards" / "data-000000.tar").unlink()
        p = run("verify", str(out), "-n", "5")
        assert p.returncode == 2 and f"tar shard not found: {server.url}/data-000000.tar" in p.stderr, p.stderr
    finally:
        server.stop()


# --------------------------------------------------------------------------- --like


@pytest.mark.slow
def test_like_reproduces_refuses_and_merges(tmp_path, imgs, random_checkpoint):
    ckpt = random_checkpoint("resnet18")
    old = tmp_path / "old.h5"
    _extract(ckpt, imgs, old, "--out-indices", "1,3", "--dtype", "float16", "--pool", "max").check_returncode()
    same = tmp_path / "same.h5"
    p = run("extract", "resnet18", str(imgs), "-o", str(same), "--like", str(old), "-q", "--batch-size", "3", "--workers", "0")
    assert p.returncode == 0, p.stderr
    a, b = _stored(old), _stored(same)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3)
    import featdump

    with featdump.open(same) as f:
        assert (f.meta["dtype"], f.meta["pool"], f.meta["out_indices"]) == ("float16", "max", [1, 3])

    for flag in (["--dtype", "float32"], ["--pool", "avg"], ["--no-pretrained"], ["--out-indices", "2"]):
        p = run("extract", "resnet18", str(imgs), "-o", str(tmp_path / "x.h5"), "--like", str(old), *flag)
        assert p.returncode == 2 and flag[0] in p.stderr and "changes what the rows mean" in p.stderr, p.stderr
    p = run("extract", "resnet34", str(imgs), "-o", str(tmp_path / "x.h5"), "--like", str(old))
    assert p.returncode == 2 and "MODEL" in p.stderr

    # new images, extracted like the old file, merge with it
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(PHOTOS / "camera.jpg", more / "camera.jpg")
    new = tmp_path / "new.h5"
    run("extract", "resnet18", str(more), "-o", str(new), "--like", str(old), "-q", check=True)
    p = run("merge", str(old), str(new), "-o", str(tmp_path / "both.h5"), "--copy")
    assert p.returncode == 0, p.stderr
    a, b = _stored(old), _stored(new)
    with featdump.open(tmp_path / "both.h5") as f, featdump.open(old) as o, featdump.open(new) as n:
        assert f.num_images == 5 and f.paths == o.paths + n.paths and f.row("camera.jpg") == 4
        for name in f.layers:
            np.testing.assert_array_equal(f.numpy(name), np.concatenate([a[name], b[name]]))


# --------------------------------------------------------------------------- disk planning


@pytest.mark.slow
def test_inspect_images_json():
    p = run("inspect", "resnet18", "--images", "1000", "--dtype", "float16", "--pool", "avg", "--json", check=True)
    d = json.loads(p.stdout)
    assert d["images"] == 1000
    assert [l["total_bytes"] for l in d["layers"]] == [l["shape"][0] * 2 * 1000 for l in d["layers"]]
    assert d["total_bytes"] == sum(l["total_bytes"] for l in d["layers"])


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_space_check_refuses_before_the_model(tiny_fs, imgs, tmp_path):
    missing = tmp_path / "no-such.safetensors"  # the model would fail to load: proves it never does
    p = run("extract", "resnet18", str(imgs), "-o", str(tiny_fs / "f.h5"), "--checkpoint", str(missing))
    assert p.returncode == 2, p.stderr
    assert "not enough space" in p.stderr and "--dtype float16" in p.stderr and "--no-space-check" in p.stderr
    assert "MiB" in p.stderr and str(tiny_fs) in p.stderr
    p = run("extract", "resnet18", str(imgs), "-o", str(tiny_fs / "f.h5"), "--checkpoint", str(missing), "--no-space-check")
    assert p.returncode == 2 and "not enough space" not in p.stderr and "no-such" in p.stderr
    p = run("extract", "resnet18", str(imgs), "-o", str(tiny_fs / "f.h5"), "--no-pretrained", "--pool", "avg", "-q")
    assert p.returncode == 0, p.stderr  # pooled vectors fit


# --------------------------------------------------------------------------- leftovers


@pytest.mark.slow
def test_models_nothing_matches():
    p = run("models", "zzz*")
    assert p.returncode == 2 and "no timm model matches 'zzz*'" in p.stderr


def test_list_file_quotes_and_duplicates(tmp_path):
    from featdump.data.discover import read_list_file
    from featdump.errors import UsageError

    lst = tmp_path / "l.txt"
    lst.write_text('a.jpg\n"  b c .jpg "\n  d.jpg  \n')
    assert [r.path for r in read_list_file(lst)] == ["a.jpg", "  b c .jpg ", "d.jpg"]
    lst.write_text("a.jpg\nb.jpg\n a.jpg\n")
    with pytest.raises(UsageError, match=r"names 'a.jpg' twice \(lines 1 and 3\)"):
        read_list_file(lst)


@pytest.mark.slow
def test_show_paths_and_whole_command(tmp_path, imgs, cli):
    out = tmp_path / "f.h5"
    long_dir = imgs.rename(tmp_path / ("a" * 120))
    run("extract", "resnet18", str(long_dir), "-o", str(out), "--no-pretrained", "-q", "--out-indices", "1", "--pool", "avg", check=True)
    res = cli("show", str(out), "--paths")
    assert res.stdout.split() == sorted(NAMES)
    assert json.loads(cli("show", str(out), "--paths", "--json").stdout) == sorted(NAMES)
    shown = re.sub(r"[\s│]", "", cli("show", str(out)).stdout)  # the provenance folds long values
    assert "a" * 120 in shown and "-o" + str(out) + "--no-pretrained-q--out-indices1--poolavg" in shown


@pytest.mark.slow
def test_module_names_do_not_wrap_at_80_columns():
    for extra in ([], ["--images", "100000"]):
        p = run("inspect", "efficientnet_b0", *extra, env={"COLUMNS": "80"}, check=True)
        assert all(len(line) <= 80 for line in p.stdout.splitlines())
        assert all(f"blocks.{i} " in p.stdout for i in (0, 1, 2, 4, 6)), p.stdout


@pytest.mark.slow
def test_resume_with_another_batch_size_warns(tmp_path, imgs):
    import h5py

    from featdump.run.facts import previous_facts, rounding_note

    out = tmp_path / "r.h5"
    run("extract", "resnet18", str(imgs), "-o", str(out), "--no-pretrained", "-q", "--batch-size", "2",
        "--device", "cpu", "--out-indices", "1", "--pool", "avg", check=True)  # fmt: skip
    assert previous_facts(out) is None  # complete: nothing to continue
    with h5py.File(out, "r+") as h5:
        h5.attrs["complete"] = False
    assert previous_facts(out) == {"batch_size": 2, "device": "cpu"}
    assert rounding_note({"batch_size": 2, "device": "cpu"}, {"batch_size": 2, "device": "cpu"}) is None
    note = rounding_note({"batch_size": 2, "device": "cpu"}, {"batch_size": 3, "device": "cpu"})
    assert note and "--batch-size 2 then, 3 now" in note and "float rounding" in note
    p = run("extract", "resnet18", str(imgs), "-o", str(out), "--no-pretrained", "-q", "--batch-size", "3",
            "--device", "cpu", "--out-indices", "1", "--pool", "avg", "--resume")  # fmt: skip
    assert p.returncode == 0 and "featdump: warning: --resume with another --batch-size" in p.stderr, p.stderr


def test_verify_tolerance_rules():
    """The table's tolerance, widened for CUDA fp32 (TF32) and for another JPEG decoder; never narrowed."""
    from featdump.run.verify import CUDA_FP32, OTHER_DECODER, tolerance

    assert tolerance("fp32", "float32") == (1e-3, 0.99999, [])
    rtol, cos, why = tolerance("fp32", "float32", made_on="cuda:0", here="cpu")
    assert (rtol, cos) == CUDA_FP32 and "TF32" in why[0]
    assert tolerance("fp32", "float16", made_on="cpu", here="cuda")[:2] == CUDA_FP32
    assert tolerance("bf16", "float16", made_on="cuda:0", here="cpu") == (0.1, 0.99, [])  # autocast is wider already
    rtol, cos, why = tolerance("fp32", "float32", made_on="cuda:0", here="cpu", decode="gpu")
    assert (rtol, cos) == OTHER_DECODER and len(why) == 2 and "nvjpeg" in why[1]
    assert tolerance("fp32", "float32", made_on="cuda:0", here="cuda:1", decode="gpu")[:2] == CUDA_FP32


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:OMP_WAIT_POLICY")
def test_verify_a_gpu_decoded_file_on_the_cpu(tmp_path, imgs, monkeypatch):
    """A --decode gpu file (made here with the device decoder's code path on the CPU, then marked as
    made on CUDA) is re-decoded by torchvision on the CPU and checked with the widened tolerance."""
    import h5py

    import featdump
    from featdump.run import job

    monkeypatch.setattr(job, "check_decode", lambda cfg, device: None)  # no CUDA here: run its code path on the CPU
    out = tmp_path / "gpu.h5"
    featdump.extract("resnet18", [str(imgs)], output=str(out), pretrained=False, out_indices="2", decode="gpu",
                     device="cpu", quiet=True, progress=False)
    with h5py.File(out, "r+") as h5:
        assert h5.attrs["decode"] == "gpu"
        h5.attrs["device"] = "cuda:0"
    p = run("verify", str(out), "-n", "2", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["rtol"] == 0.5 and any("nvjpeg" in w for w in report["widened"])
    assert all(l["max_rel"] < 1e-5 for l in report["layers"])  # the same decoder code here: equal rows
    p = run("verify", str(out), "-n", "2")
    assert p.returncode == 0 and "widened" in p.stdout and "TF32" in p.stdout, p.stdout
