"""Every kind of bad input is a row in /failed with a reason; nothing hangs, nothing shifts a row;
--strict exits 1 at the end; --max-image-pixels moves the decompression-bomb limit."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faultkit import FAST, MODEL, read_rows, run


def _png(w: int, h: int, data: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")


def _jpeg_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "JPEG", exif=exif.tobytes())
    data = bytearray(buf.getvalue())
    at = data.index(b"\x01\x12\x00\x03")  # the orientation entry (big-endian TIFF)
    data[at + 8 : at + 10] = struct.pack(">H", value)
    return bytes(data)


def _good(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (30, 34, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A folder of every bad kind between good images; returns (folder, list file, expected reasons)."""
    root = tmp_path_factory.mktemp("zoo")
    d = root / "imgs"
    for i, name in enumerate(["a.png", "m.png", "z.png", "x.jpg/inner.png"]):
        _good(d / name, i)
    expect = {}
    (d / "empty.png").write_bytes(b"")
    expect["empty.png"] = "empty file"
    (d / "text.jpg").write_text("hello")
    expect["text.jpg"] = "cannot identify"
    good = (d / "a.png").read_bytes()
    (d / "trunc.png").write_bytes(good[: len(good) // 2])
    expect["trunc.png"] = "truncated"
    (d / "zero_width.png").write_bytes(_png(0, 10, b"\0" * 10))
    expect["zero_width.png"] = "cannot identify"
    (d / "exif_orientation.jpg").write_bytes(_jpeg_with_orientation(99))
    expect["exif_orientation.jpg"] = "broken EXIF"
    (d / "bomb.png").write_bytes(_png(10000, 10000, b"\0" * 100))
    expect["bomb.png"] = "too many pixels"
    expect["x.jpg"] = "is a folder"  # a folder with an image's name; its content is still walked
    os.mkfifo(d / "pipe.png")
    expect["pipe.png"] = "not a regular file"
    (d / "zeros.png").symlink_to("/dev/zero")  # a device: reading it would never end
    expect["zeros.png"] = "not a regular file"
    if os.geteuid() == 0:
        os.mknod(d / "null.jpg", 0o600 | __import__("stat").S_IFCHR, os.makedev(1, 3))
        expect["null.jpg"] = "not a regular file"
    else:
        locked = d / "locked.png"
        _good(locked, 9)
        locked.chmod(0)
        expect["locked.png"] = "Permission denied"
    listing = root / "list.txt"  # listed, but gone by the time it is read
    _good(root / "outside.png", 5)  # not in the folder: a listed image inside it would be stored twice (exit 2)
    listing.write_text(f"{root / 'outside.png'}\n{root / 'vanished.png'}\n")
    expect[str(root / "vanished.png")] = "No such file"
    return d, listing, expect


@pytest.mark.slow
def test_every_bad_kind_is_recorded_and_nothing_hangs(tmp_path: Path, zoo, random_checkpoint, cli) -> None:
    folder, listing, expect = zoo
    out = tmp_path / "zoo.h5"
    ckpt = str(random_checkpoint("resnet18"))
    argv = ["extract", MODEL, str(folder), str(listing), "-o", str(out), "--checkpoint", ckpt, *FAST]
    proc = run(argv, timeout=240)  # a FIFO or device that were opened would hang here
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out)
    assert rows["complete"]
    assert len(rows["failed"]) == len(rows["errors"])
    failed = dict(zip(rows["failed"], rows["errors"], strict=True))
    # two INPUTs: the folder's stored paths start with the folder as written (docs/inputs.md)
    expect = {(k if os.path.isabs(k) else f"{folder}/{k}"): v for k, v in expect.items()}
    assert f"(tried {folder.parent / 'vanished.png'})" in failed[str(folder.parent / "vanished.png")]
    for path, reason in expect.items():
        assert path in failed, (path, sorted(failed))
        assert reason in failed[path], (path, failed[path])
        assert "\n" not in failed[path]
    in_folder = [f"{folder}/{p}" for p in ("a.png", "m.png", "x.jpg/inner.png", "z.png")]
    assert rows["paths"] == [*in_folder, str(folder.parent / "outside.png")]  # INPUTs in the order given
    assert rows["features"]["layer4"].shape[0] == len(rows["paths"])

    strict = cli(*argv[:5], str(tmp_path / "strict.h5"), *argv[6:], "--strict", "--workers", "0")
    assert strict.exit_code == 1, strict.output
    assert f"{len(expect)} image(s) failed (--strict)" in strict.output
    assert read_rows(tmp_path / "strict.h5")["complete"]  # the file is finished all the same


def test_file_vanishing_between_listing_and_reading(tmp_path: Path) -> None:
    from featdump.data.datasets import ImageDataset
    from featdump.data.discover import discover

    for i in range(3):
        _good(tmp_path / f"{i}.png", i)
    refs = discover([str(tmp_path)])
    (tmp_path / "1.png").unlink()
    data = ImageDataset(refs, lambda im: np.asarray(im))
    results = [data[i] for i in range(3)]
    assert [r[2] == "" for r in results] == [True, False, True]
    assert "FileNotFoundError" in results[1][2]


def test_unreadable_file_without_root_privileges(tmp_path: Path) -> None:
    """Root reads everything, so drop to nobody in a forked child (featdump already imported)."""
    from featdump.data.decode import describe_error, load_rgb

    path = tmp_path / "locked.png"
    _good(path, 1)
    load_rgb(str(path))  # Pillow's PNG plugin is loaded before the privileges go
    path.chmod(0)
    tmp_path.chmod(0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                load_rgb(str(path))
                msg = "read it"
            except Exception as exc:  # noqa: BLE001
                msg = describe_error(exc)
            os.write(write, msg.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    msg = os.read(read, 1000).decode()
    if msg == "read it" and os.geteuid() != 0:
        pytest.skip("this user can read a mode-000 file (a file system that ignores permissions)")
    assert "PermissionError" in msg and "Permission denied" in msg, msg


@pytest.mark.slow
def test_max_image_pixels(tmp_path: Path, random_checkpoint, cli) -> None:
    d = tmp_path / "imgs"
    _good(d / "small.png", 0)  # 34x30 = 1020 pixels
    Image.new("RGB", (100, 100)).save(d / "big.png")
    (d / "bomb.png").write_bytes(_png(10000, 10000, b"\0" * 100))  # 100 MP, header only
    base = ["extract", MODEL, str(d), "--checkpoint", str(random_checkpoint("resnet18")), *FAST, "--workers", "0"]
    result = cli(*base, "-o", str(tmp_path / "a.h5"), "--max-image-pixels", "5000")
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / "a.h5")
    assert len(rows["failed"]) == len(rows["errors"])
    failed = dict(zip(rows["failed"], rows["errors"], strict=True))
    assert rows["paths"] == ["small.png"]
    assert "too many pixels" in failed["big.png"] and "--max-image-pixels" in failed["big.png"]
    # a real gigapixel-class scan: past Pillow's own 2x refusal, so it fails only for its own damage
    result = cli(*base, "-o", str(tmp_path / "b.h5"), "--max-image-pixels", "200000000")
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / "b.h5")
    assert len(rows["failed"]) == len(rows["errors"])
    failed = dict(zip(rows["failed"], rows["errors"], strict=True))
    assert rows["paths"] == ["big.png", "small.png"]
    assert "too many pixels" not in failed["bomb.png"] and "truncated" in failed["bomb.png"]


@pytest.mark.slow
def test_a_run_in_which_every_input_failed_exits_1_naming_the_path_tried(tmp_path: Path, random_checkpoint, cli) -> None:
    """docs/safety.md, exit status: the file is written (every failure recorded), but nothing was read, so
    the run is not a success: exit 1 with the first error and the path featdump tried."""
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "images.txt"  # entries relative to the list's folder, not the cwd
    listing.write_text("photos/a.png\nphotos/b.png\n")
    out = tmp_path / "none.h5"
    ckpt = str(random_checkpoint("resnet18"))
    result = cli("extract", MODEL, str(listing), "-o", str(out), "--checkpoint", ckpt, *FAST, "--workers", "0")
    assert result.exit_code == 1, result.output
    tried = tmp_path / "lists" / "photos" / "a.png"
    assert "no image could be read: all 2 input(s) failed; first: photos/a.png" in result.output
    assert f"(tried {tried})" in result.output
    rows = read_rows(out)
    assert rows["complete"] and rows["paths"] == [] and rows["failed"] == ["photos/a.png", "photos/b.png"]

    import featdump
    from featdump.errors import FeatdumpError

    with pytest.raises(FeatdumpError, match="no image could be read"):
        featdump.extract(MODEL, [listing], tmp_path / "api.h5", checkpoint=ckpt, img_size="64", device="cpu", quiet=True)
