"""``featdump verify``: stored rows recomputed from their recorded inputs and weights (folders, tar
shards, tables, HTTP), pass / fail / cannot verify, and the tolerance rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import extract_resnet18, run


@pytest.mark.slow
def test_verify_pass_fail_and_cannot(tmp_path, imgs, random_checkpoint):
    import h5py

    ckpt = tmp_path / "r18.safetensors"
    shutil.copy(random_checkpoint("resnet18"), ckpt)
    out = tmp_path / "f.h5"
    extract_resnet18(ckpt, imgs, out, "--out-indices", "1,-1").check_returncode()
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


def test_verify_says_a_tar_member_over_max_image_bytes_and_takes_the_flag(cli, tmp_path, photos):
    """A member now over the cap is said as such (exit 2, how to raise it), not "not in the tar shard any more"."""
    import tarfile

    from streamkit import hand_tar

    shard = hand_tar(tmp_path / "s.tar", [("coins.jpg", (photos / "coins.jpg").read_bytes())])
    out = tmp_path / "t.h5"
    args = ("resnet18", str(shard), "--no-pretrained", "--img-size", "32", "--out-indices", "-1", "--device", "cpu")
    assert cli("extract", *args, "-q", "-o", str(out)).exit_code == 0
    assert cli("verify", str(out), "--device", "cpu", "-q").exit_code == 0
    res = cli("verify", str(out), "--device", "cpu", "-q", "--max-image-bytes", "1000")
    assert res.exit_code == 2 and "member coins.jpg (35155 bytes) holds more than --max-image-bytes (1000 bytes)" in res.stderr
    info = tarfile.TarInfo("coins.jpg")  # now a GNU sparse member of 4 GiB: a 512-byte header on disk
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 0
    head = bytearray(info.tobuf(tarfile.GNU_FORMAT)[:512])
    head[483:495], head[148:156] = b"%011o\0" % (4 << 30), b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    shard.write_bytes(bytes(head) + b"\0" * 1024)
    res = cli("verify", str(out), "--device", "cpu", "-q")
    assert res.exit_code == 2, res.output
    assert f"row 0's image coins.jpg in the tar shard {shard} cannot be read now: member coins.jpg (4294967296 bytes) " \
        "holds more than --max-image-bytes (268435456 bytes); raise it" in " ".join(res.stderr.split())


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


# --------------------------------------------------------------------------- verify: crafted attributes, many rows


def _with_attrs(src: Path, dst: Path, **attrs: object) -> Path:
    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as h5:
        for name, value in attrs.items():
            h5.attrs[name] = value
    return dst


@pytest.mark.slow
def test_verify_checks_crafted_attributes_before_running_the_model(tmp_path, imgs):
    """A file claiming an 8192x8192 input is refused before the model runs (its maps are 16x16; a
    pooled file: the memory it would take); crafted values are named as the file's attributes."""
    from featdump.run.verify import ROW_MEMORY, available_memory

    maps, pooled = tmp_path / "maps.h5", tmp_path / "pooled.h5"
    common = ("resnet18", str(imgs), "--no-pretrained", "--img-size", "64", "-q", "--device", "cpu")
    run("extract", *common, "-o", str(maps), "--out-indices", "1", check=True)
    run("extract", *common, "-o", str(pooled), "--out-indices", "-1", "--pool", "avg", check=True)
    huge = [3, 8192, 8192]
    p = run("verify", str(_with_attrs(maps, tmp_path / "a.h5", input_size=huge)), timeout=120)
    assert p.returncode == 2, p.stderr
    assert "at its attribute input_size 8192x8192 this timm makes layer1 (64, 2048, 2048), the file stores (64, 16, 16)" in p.stderr
    for attrs, words in (
        ({"pool": "bogus"}, "attribute pool must be one of none|avg|max, not 'bogus'"),
        ({"input_size": [3, 99999, 5]}, "attribute input_size 99999x5 is out of range"),
        ({"out_indices": [9]}, "attribute out_indices 9 out of range for resnet18"),
        ({"input_size": "abc"}, "attribute input_size 'abc' is not valid"),
        ({"out_indices": "x"}, "attribute out_indices 'x' is not valid"),
        ({"weights": "pretrained:resnet18.a1_in1k"}, "could not get pretrained weights for resnet18"),  # offline
    ):
        p = run("verify", str(_with_attrs(maps, tmp_path / "b.h5", **attrs)))
        assert p.returncode == 2 and f"cannot verify {tmp_path / 'b.h5'}: {words}" in p.stderr, p.stderr
        assert "--" not in p.stderr  # no flag the user never gave
    if available_memory() > ROW_MEMORY * 12 * 8192 * 8192:
        pytest.skip("this machine has the memory to re-extract a row at 8192x8192: nothing to refuse")
    p = run("verify", str(_with_attrs(pooled, tmp_path / "c.h5", input_size=huge)), timeout=120)
    assert p.returncode == 2 and "at its attribute input_size 8192x8192 needs about 24.0 GiB" in p.stderr, p.stderr


def test_verify_refuses_a_file_whose_normalisation_is_not_the_models(cli, tmp_path, photos):
    """An edited mean/std (or a timm that now normalises otherwise) is named, not verified as OK."""
    out = tmp_path / "f.h5"
    args = ("resnet18", str(photos / "coins.jpg"), "--no-pretrained", "--img-size", "32", "--out-indices", "-1")
    assert cli("extract", *args, "-q", "-o", str(out), "--device", "cpu").exit_code == 0
    assert cli("verify", str(out), "--device", "cpu", "-q").exit_code == 0
    res = cli("verify", str(_with_attrs(out, tmp_path / "s.h5", std=[0.5, 0.5, 0.5])), "--device", "cpu")
    assert res.exit_code == 2, res.output
    assert "its attribute std is [0.5, 0.5, 0.5], this timm normalises with [0.229" in res.output, res.output


def test_verify_reads_a_scalar_process_attribute_as_one_step(cli, tmp_path, photos):
    """featdump stores ``process`` as a list; a crafted scalar string is one step, not one per character."""
    out = tmp_path / "f.h5"
    args = ("resnet18", str(photos / "coins.jpg"), "--no-pretrained", "--img-size", "32", "--out-indices", "-1")
    assert cli("extract", *args, "-q", "--process", "l2norm", "-o", str(out), "--device", "cpu").exit_code == 0
    res = cli("verify", str(_with_attrs(out, tmp_path / "s.h5", process="l2norm")), "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output


def test_verify_names_five_failing_rows_and_how_many_more(cli, tmp_path, photos):
    import h5py

    out = tmp_path / "f.h5"
    args = ("resnet18", str(photos), "--no-pretrained", "--img-size", "32", "--out-indices", "-1", "--pool", "avg", "-q")
    assert cli("extract", *args, "-o", str(out), "--device", "cpu").exit_code == 0
    with h5py.File(out, "r+") as h5:
        h5["features/layer4"][...] = -h5["features/layer4"][...]
    res = cli("verify", str(out), "-n", "8", "--device", "cpu", "-q")
    assert res.exit_code == 1
    assert "8 of 8 checked row(s) differ beyond the tolerance: 0 (astronaut.jpg)" in res.stderr
    assert "4 (coins.jpg) … and 3 more" in res.stderr


def test_verify_takes_a_missing_attribute_as_its_default(cli, tmp_path, photos):
    """A file without an attribute the run would have written (tokens, tile_scale, max_side) verifies
    at that option's default, as a run without the flag would make it."""
    import h5py

    out = tmp_path / "f.h5"
    args = ("resnet18", str(photos / "coins.jpg"), "--no-pretrained", "--img-size", "32", "--out-indices", "-1", "-q")
    assert cli("extract", *args, "-o", str(out), "--device", "cpu").exit_code == 0
    with h5py.File(out, "r+") as h5:
        for name in ("tokens", "tile_scale", "max_side"):
            del h5.attrs[name]
    res = cli("verify", str(out), "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
