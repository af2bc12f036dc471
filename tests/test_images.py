"""Inputs: discovery, odd-but-valid encodings to RGB, broken files recorded without shifting rows."""

from __future__ import annotations

import io
import os
import string
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from featdump.data.decode import load_rgb, to_rgb
from featdump.data.discover import discover, read_list_file
from featdump.errors import UsageError


def _photo(size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (Pillow refuses it before decoding)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def make_odd_folder(root: Path) -> tuple[list[str], list[str]]:
    """Valid images in odd encodings, and broken files; returns (good, bad) relative paths."""
    base = _photo()
    (root / "nested" / "deeper").mkdir(parents=True)
    good = {
        "gray.png": base.convert("L"),
        "rgba.png": base.convert("RGBA"),
        "palette.png": base.convert("P", palette=Image.Palette.ADAPTIVE),
        "cmyk.jpg": base.convert("CMYK"),
        "photo.webp": base,
        "photo.tiff": base,
        "photo.bmp": base,
        "photo.ppm": base,
        "photo.pgm": base.convert("L"),
        "UPPER.JPG": base,
        "café ünï name.png": base,
        "nested/deeper/inner.jpeg": base,
    }
    for name, im in good.items():
        im.save(root / name)
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette-transparent.png", transparency=0)
    deep = (np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16)
    Image.fromarray(deep).save(root / "sixteen-bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    base.save(root / "exif-rotated.jpg", exif=exif.tobytes())
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good_names = [*good, "palette-transparent.png", "sixteen-bit.png", "exif-rotated.jpg", "animated.gif"]

    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image\n")
    buf = io.BytesIO()
    base.save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "random.png").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (root / "bomb.png").write_bytes(_bomb_png(30000, 30000))
    bad_names = ["empty.jpg", "text.jpg", "truncated.jpg", "random.png", "bomb.png"]

    # Things that are not inputs at all.
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(buf.getvalue())
    (root / ".cache").mkdir()
    base.save(root / ".cache" / "skipped.jpg")
    os.symlink("..", root / "nested" / "loop")
    return sorted(good_names), sorted(bad_names)


def test_discovery_sorted_hidden_skipped_loops_safe(tmp_path):
    good, bad = make_odd_folder(tmp_path)
    refs = discover([str(tmp_path)])
    paths = [r.path for r in refs]
    assert paths == sorted(good + bad)
    assert not any(p.startswith(".") or "/." in p for p in paths)


def test_conversions_to_rgb(tmp_path):
    make_odd_folder(tmp_path)
    gray = np.asarray(load_rgb(str(tmp_path / "gray.png")))
    assert gray.shape == (40, 48, 3) and (gray[..., 0] == gray[..., 1]).all()
    rotated = load_rgb(str(tmp_path / "exif-rotated.jpg"))
    assert rotated.size == (40, 48)  # EXIF orientation 6 applied
    first = np.asarray(load_rgb(str(tmp_path / "animated.gif")))
    assert tuple(first[0, 0]) == (255, 0, 0)  # first frame
    deep = np.asarray(load_rgb(str(tmp_path / "sixteen-bit.png")))
    src = np.asarray(Image.open(tmp_path / "sixteen-bit.png")).astype(np.float64)
    np.testing.assert_array_equal(deep[..., 0], np.rint(src * 255 / 65535).astype(np.uint8))
    for name in os.listdir(tmp_path):
        if name.endswith((".png", ".jpg", ".gif", ".webp", ".tiff")) and name not in {
            "empty.jpg", "text.jpg", "truncated.jpg", "random.png", "bomb.png", ".hidden.jpg",
        }:  # fmt: skip
            im = load_rgb(str(tmp_path / name))
            assert im.mode == "RGB", name


def test_alpha_is_composited_on_black():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # transparent white -> black
    rgba.putpixel((1, 0), (200, 100, 50, 255))  # opaque stays
    out = np.asarray(to_rgb(rgba))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == (200, 100, 50)
    la = Image.new("LA", (1, 1), (255, 128))
    assert tuple(np.asarray(to_rgb(la))[0, 0]) == (128, 128, 128)


def test_cmyk_converted():
    cyan = Image.new("CMYK", (1, 1), (255, 0, 0, 0))
    assert tuple(np.asarray(to_rgb(cyan))[0, 0]) == (0, 255, 255)


@pytest.mark.slow
def test_broken_files_are_recorded_and_rows_do_not_shift(cli, random_checkpoint, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    good, bad = make_odd_folder(folder)
    ckpt = str(random_checkpoint("resnet18"))
    common = ["--checkpoint", ckpt, "--out-indices", "-1", "--img-size", "64", "--batch-size", "3", "--quiet"]
    mixed = cli("extract", "resnet18", str(folder), "-o", str(tmp_path / "mixed.h5"), *common)
    assert mixed.exit_code == 0, mixed.output
    listing = tmp_path / "good.txt"
    listing.write_text("".join(f"odd/{g}\n" for g in good))
    clean = cli("extract", "resnet18", str(listing), "-o", str(tmp_path / "clean.h5"), *common)
    assert clean.exit_code == 0, clean.output
    with h5py.File(tmp_path / "mixed.h5") as m, h5py.File(tmp_path / "clean.h5") as c:
        assert [p.decode() for p in m["paths"][:]] == good
        assert [p.decode() for p in c["paths"][:]] == [f"odd/{g}" for g in good]
        np.testing.assert_allclose(m["features/layer4"][:], c["features/layer4"][:], rtol=1e-5, atol=1e-6)
        assert len(m["failed/paths"]) == len(m["failed/errors"])
        failed = dict(zip([p.decode() for p in m["failed/paths"][:]], [e.decode() for e in m["failed/errors"][:]], strict=True))
        assert sorted(failed) == bad
        assert all("\n" not in e and e for e in failed.values())
        assert "pixels" in failed["bomb.png"].lower()
        assert "empty" in failed["empty.jpg"].lower()
        assert int(m.attrs["num_images"]) == len(good) and int(m.attrs["num_failed"]) == len(bad)
        assert bool(m.attrs["complete"])
    strict = cli("extract", "resnet18", str(folder), "-o", str(tmp_path / "strict.h5"), "--strict", *common)
    assert strict.exit_code == 1
    assert f"{len(bad)} image(s) failed" in strict.stderr


def test_max_image_pixels_option(cli, random_checkpoint, tmp_path):
    _photo((300, 200)).save(tmp_path / "big.png")
    _photo((30, 20)).save(tmp_path / "small.png")
    out = tmp_path / "o.h5"
    r = cli(
        "extract", "resnet18", str(tmp_path), "-o", str(out), "--checkpoint", str(random_checkpoint("resnet18")),
        "--img-size", "64", "--max-image-pixels", "10000", "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert [p.decode() for p in f["paths"][:]] == ["small.png"]
        err = f["failed/errors"][0].decode()
        assert "max-image-pixels" in err and "60000 pixels > 10000" in err  # our limit, not Pillow's doubled one


def test_list_file_relative_to_its_folder_and_stored_as_written(tmp_path):
    (tmp_path / "imgs").mkdir()
    _photo().save(tmp_path / "imgs" / "b.png")
    _photo().save(tmp_path / "imgs" / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nimgs/b.png\n\nimgs/a.png\n")
    refs = discover([str(listing)])
    assert [r.path for r in refs] == ["imgs/b.png", "imgs/a.png"]  # the list's own order (docs/inputs.md)
    assert Path(refs[1].source) == tmp_path / "imgs" / "a.png"


def test_several_folders_keep_their_folder_in_the_stored_path(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "split" / split / "cat").mkdir(parents=True)
        _photo().save(tmp_path / "split" / split / "cat" / "1.png")
    refs = discover([str(tmp_path / "split" / "val"), str(tmp_path / "split" / "train") + "/"])
    root = str(tmp_path / "split")
    assert [r.path for r in refs] == [f"{root}/val/cat/1.png", f"{root}/train/cat/1.png"]  # INPUTs as given


def test_discovery_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images in folder"):
        discover([str(tmp_path / "empty")])
    with pytest.raises(UsageError, match="input not found"):
        discover([str(tmp_path / "nope")])
    (tmp_path / "x").mkdir()
    _photo().save(tmp_path / "x" / "same.png")
    listing = tmp_path / "twice.txt"
    listing.write_text("x/same.png\nx/same.png\n")
    with pytest.raises(UsageError, match=r"twice.txt names 'x/same.png' twice \(lines 1 and 2\)"):
        discover([str(listing)])
    listing.write_text("x/same.png\n./x//same.png\n")  # one file, two spellings
    with pytest.raises(UsageError, match=r"'x/same.png' \(also named './x//same.png'\) would be stored twice"):
        discover([str(listing)])
    with pytest.raises(UsageError, match=r"also named .* would be stored twice \(from .* and from "):
        discover([str(tmp_path / "x" / "same.png"), str(tmp_path / "x" / ".." / "x" / "same.png")])


# --------------------------------------------------------------------------- properties


# (list files strip each line, so names here neither start nor end with a space)
names = st.text(alphabet=string.ascii_letters + string.digits + "-_ éß中", min_size=1, max_size=8).map(
    lambda t: t.strip() or "x"
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.lists(st.tuples(st.sampled_from(["", "a", "B", "a/z", "é"]), names), min_size=1, max_size=15, unique=True))
def test_list_order_property(tmp_path_factory, tree) -> None:
    """A folder is sorted by stored path in code-point order, whatever order the file system lists
    it in; image files and lists keep the order given; the digest --resume compares depends only on
    the stored paths in row order."""
    from featdump.data.discover import discover, list_digest

    root = tmp_path_factory.mktemp("tree")
    for folder, name in tree:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"{name}.png").write_bytes(b"x")
    refs = discover([str(root)])
    paths = [r.path for r in refs]
    assert paths == sorted(paths) == sorted({(f"{d}/" if d else "") + f"{n}.png" for d, n in tree})
    files = [str(root / p) for p in paths]
    shuffled = files[::-1]
    by_files = discover(shuffled)
    assert [r.path for r in by_files] == shuffled
    listing = root / "list.txt"
    listing.write_text("\n".join(reversed(paths)))
    assert list_digest(discover([str(listing)])) == list_digest(list(reversed(refs)))


def test_list_file_quotes_and_duplicates(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text('a.jpg\n"  b c .jpg "\n  d.jpg  \n')
    assert [r.path for r in read_list_file(lst)] == ["a.jpg", "  b c .jpg ", "d.jpg"]
    lst.write_text("a.jpg\nb.jpg\n a.jpg\n")
    with pytest.raises(UsageError, match=r"names 'a.jpg' twice \(lines 1 and 3\)"):
        read_list_file(lst)
