"""Bounded reads through the real command: members, bodies and files past ``--max-image-bytes``, PAX
headers past their cap, ``file://`` URLs to devices and FIFOs, hostile HTTP answers (endless, a gzip
bomb, dripping, broken mid-body, a redirect loop), a stop request while a read waits, and
``--resume`` over a shard or table whose content changed at the same size.

Every hostile file and server is made here; memory attacks run under ``RLIMIT_AS``, hangs under a
timeout, servers on 127.0.0.1 only."""

from __future__ import annotations

import gzip
import io
import itertools
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from streamkit import argv, features, images_in_order

from conftest import ROOT
from faultkit import make_images

LIMITED = """
import resource, subprocess, sys
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a 4 GiB read would not fit beside torch
p = subprocess.run([sys.executable, "-m", "featdump", *sys.argv[1:]], preexec_fn=limit, capture_output=True, text=True)
sys.stderr.write(p.stdout + p.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss << 10)  # the run's peak resident bytes
sys.exit(p.returncode)
"""


def limited(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", LIMITED, *args], capture_output=True, text=True, env=full, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, random_checkpoint: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("limits")
    images = make_images(root / "images", 6, seed=3)
    return {"root": root, "pngs": [p.read_bytes() for p in images_in_order(images)], "ckpt": random_checkpoint("resnet18")}


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


def _header(name: str, kind: bytes, size: int, real_size: int | None = None) -> bytes:
    """A bare header claiming ``size`` bytes of data (and, for a GNU sparse member, ``real_size``)."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    if real_size is not None:
        buf[483:495] = b"%011o\0" % real_size  # GNU sparse: the member's size once its holes are filled
        buf[148:156] = b" " * 8
        buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf[:512])


@pytest.mark.slow
def test_tar_members_and_headers_past_the_caps_are_failed_records(data: dict[str, Any], tmp_path: Path) -> None:
    """A GNU sparse member of 4 GiB (a 512-byte header on disk; an image, and a caption kept with
    --keep txt), a 300 MB member in a .tar.gz, a PAX header claiming 3 GiB and a GNU long name
    claiming 2 GiB: each a /failed record, the samples around them kept, under 6 GB of address
    space. The sample being read when the PAX header is found (f.png) is part of the rest."""
    a, b, c, d, e, f = data["pngs"][:6]
    sparse = tmp_path / "s-0.tar"
    caption = _member("g.png", f) + _header("g.txt", tarfile.GNUTYPE_SPARSE, 0, 4 << 30)
    sparse.write_bytes(_member("a.png", a) + _header("big.png", tarfile.GNUTYPE_SPARSE, 0, 4 << 30) + caption + _member("c.png", c) + b"\0" * 1024)
    packed = tmp_path / "s-1.tar.gz"
    with gzip.open(packed, "wb", compresslevel=1) as fh:
        fh.write(_member("d.png", d) + _member("zeros.png", bytes(300 << 20)) + _member("e.png", e) + b"\0" * 1024)
    pax = tmp_path / "s-2.tar"
    pax.write_bytes(_member("b.png", b) + _member("f.png", f) + _header("././@PaxHeader", tarfile.XHDTYPE, 3 << 30) + b"x" * 4096)
    long = tmp_path / "s-3.tar"
    long.write_bytes(_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 2 << 30) + b"x" * 4096)
    out = tmp_path / "o.h5"
    proc = limited(*argv([str(sparse), str(packed), str(pax), str(long)], out, data["ckpt"], "--keep", "txt"))
    assert proc.returncode == 0, proc.stderr
    got = features(out)
    assert [p.rsplit("/", 1)[1] for p in got["paths"]] == ["a.png", "c.png", "d.png", "e.png", "b.png"]
    skipped = f"{pax}@{512 + len(b) + (-len(b) % 512)}"
    assert got["failed"] == [f"{sparse}/big.png", f"{sparse}/g.png", f"{packed}/zeros.png", skipped, f"{long}@0"]
    assert "member big.png (4294967296 bytes) holds more than --max-image-bytes (268435456 bytes)" in got["errors"][0]
    assert "member g.txt (4294967296 bytes) holds more than --max-image-bytes" in got["errors"][1]
    assert "member zeros.png (314572800 bytes) holds more than --max-image-bytes" in got["errors"][2]
    assert "a 3221225472-byte PAX or long-name header, over 1048576 bytes" in got["errors"][3]
    assert "a 2147483648-byte PAX or long-name header, over 1048576 bytes" in got["errors"][4]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
@pytest.mark.parametrize("kind", ["list", "table"])
def test_file_urls_get_the_checks_of_plain_paths(data: dict[str, Any], tmp_path: Path, fifo: Path, kind: str) -> None:
    """``file:///dev/zero`` and a ``file://`` FIFO in a list or a table are /failed records at once
    (a plain path's checks), as is an image over ``--max-image-bytes``; the good images are rows."""
    from conftest import run

    for k in range(2):
        (tmp_path / f"good{k}.png").write_bytes(data["pngs"][k])
    listing = tmp_path / ("list.txt" if kind == "list" else "t.csv")
    entries = f"good0.png\nfile:///dev/zero\nfile://{fifo}\nfile://{tmp_path}/good1.png\n{tmp_path}/big.png\n"
    listing.write_text(entries if kind == "list" else "path\n" + entries)
    (tmp_path / "big.png").write_bytes(data["pngs"][2] + bytes(1 << 20))
    out = tmp_path / "o.h5"
    proc = run(*argv(str(listing), out, data["ckpt"], "--max-image-bytes", str(1 << 20)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = features(out)
    assert got["paths"] == ["good0.png", f"file://{tmp_path}/good1.png"]
    assert got["failed"] == ["file:///dev/zero", f"file://{fifo}", f"{tmp_path}/big.png"]
    assert all("not a regular file" in e for e in got["errors"][:2]), got["errors"]
    assert "holds more than --max-image-bytes (1048576 bytes)" in got["errors"][2]


def test_verify_of_a_shard_that_became_a_fifo_refuses_at_once(cli: Any, data: dict[str, Any], tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(_member("a.png", data["pngs"][0]) + _member("b.png", data["pngs"][1]) + b"\0" * 1024)
    out = tmp_path / "o.h5"
    assert cli(*argv(str(shard), out, data["ckpt"])).exit_code == 0
    shard.unlink()
    os.mkfifo(shard)
    started = time.monotonic()
    result = cli("verify", str(out))
    assert result.exit_code == 2, result.output
    assert f"cannot read tar shard {shard}: not a regular file (FIFO, socket or device)" in result.output
    assert time.monotonic() - started < 60


# --------------------------------------------------------------------------- Parquet: memory bounded by bytes


def _parquet(path: Path, groups: list[list[bytes]]) -> None:
    """A Parquet table of one binary ``image`` column, zstd-compressed, one row group per list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("image", pa.binary())])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for cells in groups:
            offsets = pa.array([0, *itertools.accumulate(map(len, cells))], pa.int32()).buffers()[1]
            data = cells[0] if len(cells) == 1 else b"".join(cells)  # a 1 GiB cell: not copied
            column = pa.Array.from_buffers(pa.binary(), len(cells), [None, offsets, pa.py_buffer(data)])
            writer.write_table(pa.table({"image": column}, schema=schema))


@pytest.mark.slow
def test_parquet_memory_does_not_grow_with_the_table(data: dict[str, Any], tmp_path: Path) -> None:
    """Rows of 4 MB (a PNG padded with zeros): a table of 96 rows in two row groups of 192 MB
    peaks within 150 MB of one of 16 rows; a row group of one 1 GiB cell (a zstd bomb of a few
    KB on disk) is a /failed record per row, under 6 GB of address space, and the rows around it
    are read."""
    rows = [png + bytes((4 << 20) - len(png)) for png in data["pngs"]]
    peaks = {}
    for name, groups in {"small": [(rows * 3)[:16]], "large": [rows * 8, rows * 8]}.items():
        table = tmp_path / f"{name}.parquet"
        _parquet(table, groups)
        proc = limited(*argv(str(table), tmp_path / f"{name}.h5", data["ckpt"], "--image-column", "image"))
        assert proc.returncode == 0, proc.stderr
        peaks[name] = int(proc.stdout)
    assert peaks["large"] - peaks["small"] < 150 << 20, peaks  # a row group read whole: 192 MB more
    bomb = tmp_path / "bomb.parquet"
    _parquet(bomb, [data["pngs"][:2], [bytes(1 << 30)], data["pngs"][2:4]])
    assert bomb.stat().st_size < 1 << 20
    proc = limited(*argv(str(bomb), tmp_path / "bomb.h5", data["ckpt"], "--image-column", "image"))
    assert proc.returncode == 0, proc.stderr
    got = features(tmp_path / "bomb.h5")
    assert got["paths"] == ["ROW:0", "ROW:1", "ROW:3", "ROW:4"] and got["failed"] == ["ROW:2"]
    assert "its row group averages more than --max-image-bytes (268435456 bytes) a row" in got["errors"][0]


# --------------------------------------------------------------------------- --resume over changed content


@pytest.mark.parametrize("kind", ["tar", "csv"])
def test_resume_over_content_changed_at_the_same_size_is_refused(
    cli: Any, data: dict[str, Any], tmp_path: Path, kind: str
) -> None:
    """A tar rewritten in reverse order, a CSV reordered: the same name and size, other content."""
    names = [f"i{k}.png" for k in range(4)]
    for name, png in zip(names, data["pngs"], strict=False):
        (tmp_path / name).write_bytes(png)
    if kind == "tar":
        made = [_member(n, (tmp_path / n).read_bytes()) for n in names]
        target, forward, backward = tmp_path / "s.tar", b"".join(made), b"".join(reversed(made))
        forward, backward = forward + b"\0" * 1024, backward + b"\0" * 1024
    else:
        target = tmp_path / "t.csv"
        forward = ("path\n" + "".join(f"{n}\n" for n in names)).encode()
        backward = ("path\n" + "".join(f"{n}\n" for n in reversed(names))).encode()
    target.write_bytes(forward)
    out = tmp_path / "o.h5"
    assert cli(*argv(str(target), out, data["ckpt"])).exit_code == 0
    target.write_bytes(backward)
    assert len(backward) == len(forward)
    result = cli(*argv(str(target), out, data["ckpt"], "--resume"))
    assert result.exit_code == 2, result.output
    assert "--resume: the input list differs" in result.output
    assert ("(1 tar shards then, 1 now" if kind == "tar" else "(4 rows then, 4 now") in result.output, result.output
    target.write_bytes(forward)  # the same content again (a new modification time): still refused
    assert cli(*argv(str(target), out, data["ckpt"], "--resume")).exit_code == 2


# --------------------------------------------------------------------------- hostile HTTP answers


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pngs: list[bytes] = []
    bomb = b""  # gzip of 1 GiB of zeros, made by the fixture

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        tar = self.path == "/drip.tar"  # a tar shard of 1 MiB, read by ranges
        self.send_response(200 if tar else 405)
        self.send_header("Content-Length", str(1 << 20) if tar else "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        name = self.path.lstrip("/")
        try:
            if name.startswith("good"):
                return self._answer(200, self.pngs[int(name[4])])
            if name == "loop.png":
                self.send_response(302)
                self.send_header("Location", "/loop.png")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            if name == "bomb.png":
                return self._answer(200, self.bomb, {"Content-Encoding": "gzip"})
            ranged = name == "drip.tar"  # its range answered at once, then dripped
            self.send_response(206 if ranged else 200)
            if ranged:
                self.send_header("Content-Range", f"bytes 0-{(1 << 20) - 1}/{1 << 20}")
            self.send_header("Content-Length", str(1 << 20 if ranged else 1 << 40))
            self.end_headers()
            while name == "endless.png":
                self.wfile.write(bytes(1 << 16))
            if name == "broken.png":
                self.wfile.write(self.pngs[0][:100])
                self.close_connection = True
                return None
            for _ in range(200):  # drip.png, drip.tar: a byte every 5 s
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(5)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return None

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def hostile(data: dict[str, Any]) -> Iterator[str]:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as fh:
        for _ in range(64):
            fh.write(bytes(16 << 20))  # 1 GiB of zeros in ~1 MB
    Hostile.bomb = buf.getvalue()
    Hostile.pngs = data["pngs"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_hostile_http_answers_are_failed_records(data: dict[str, Any], hostile: str, tmp_path: Path) -> None:
    """An endless body, a gzip bomb (1 GiB from 1 MB), a body that drips, one that always breaks
    after 100 bytes and a redirect loop: each a /failed record with its reason, under 6 GB of
    address space and a 2 s request deadline (a 16 MiB cap), while the good URLs of the same host are rows."""
    names = ["good0.png", "endless.png", "bomb.png", "good1.png", "drip.png", "broken.png", "loop.png", "good2.png"]
    table = tmp_path / "urls.csv"
    table.write_text("url\n" + "".join(f"{hostile}/{n}\n" for n in names))
    out = tmp_path / "o.h5"
    cap = ("--max-image-bytes", str(16 << 20))  # reached within the deadline on a busy machine too
    proc = limited(*argv(str(table), out, data["ckpt"], *cap), env={"FEATDUMP_REQUEST_SECONDS": "2"}, timeout=240)
    assert proc.returncode == 0, proc.stderr
    got = features(out)
    assert [p.rsplit("/", 1)[1] for p in got["paths"]] == ["good0.png", "good1.png", "good2.png"]
    why = dict(zip((p.rsplit("/", 1)[1] for p in got["failed"]), got["errors"], strict=True))
    assert set(why) == {"endless.png", "bomb.png", "drip.png", "broken.png", "loop.png"}
    assert "holds more than --max-image-bytes (16777216 bytes)" in why["endless.png"]
    assert "(gzip-encoded) holds more than --max-image-bytes" in why["bomb.png"]
    assert "within 2 s (FEATDUMP_REQUEST_SECONDS)" in why["drip.png"] and "4 tries" in why["drip.png"]
    assert "4 tries" in why["broken.png"] and "stopped answering" not in why["broken.png"]
    assert "too many redirects: a redirect loop" in why["loop.png"], why["loop.png"]


@pytest.mark.slow
def test_a_stop_request_is_honoured_while_start_up_waits_for_a_mute_host(data: dict[str, Any], tmp_path: Path) -> None:
    """A host that takes connections and never answers: the shards' sizes are asked for at start-up;
    SIGINT there ends the run within seconds (exit 130), not after every try's deadline (minutes)."""
    import socket

    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(64)  # connections are queued by the kernel, never read
    port = mute.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATDUMP_REQUEST_SECONDS": "60"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "featdump", *argv(f"http://127.0.0.1:{port}/x-{{000..003}}.tar", tmp_path / "o.h5", data["ckpt"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        time.sleep(12)  # imports done, the lookups waiting on the mute host
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert time.monotonic() - stopped < 10
    finally:
        proc.kill()
        mute.close()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 130 and "stopped by SIGINT during start-up; nothing was written" in err, err
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "tar"])
def test_a_stop_request_is_honoured_while_a_read_waits(data: dict[str, Any], hostile: str, tmp_path: Path, kind: str) -> None:
    """SIGTERM while the only image (or the only tar shard) drips a byte every 5 s: the run ends
    within seconds (exit 143)."""
    listing = tmp_path / "list.txt"
    listing.write_text(f"{hostile}/drip.png\n")
    given = str(listing) if kind == "image" else f"{hostile}/drip.tar"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "featdump", *argv(given, tmp_path / "o.h5", data["ckpt"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    time.sleep(25)  # the model is loaded and the drip is being read
    assert proc.poll() is None
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - stopped < 15
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 143 and "stopped by SIGTERM" in err, err
