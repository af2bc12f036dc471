"""Real storage servers for the remote-input tests, each a child process on 127.0.0.1 (never any
other address), started by the tests and stopped by its PID:

- an HTTP server with range requests (``Range: bytes=a-b`` -> 206), HEAD with ``Content-Length``
  and HTML folder listings, which is what fsspec's HTTP client needs. Python's ``http.server``
  does not answer ranges, hence this one. ``--die-on TEXT`` makes it exit the moment a GET for
  a path holding TEXT arrives: a server that goes away while a run streams from it; ``--break-on
  TEXT`` cuts every answer for such a path half way (the connection closed): a body that always breaks.
- moto's standalone S3 server (``python -m moto.server``), used through the real ``s3fs`` client.

Run by hand: ``python tests/servers.py http FOLDER [--port P] [--die-on TEXT]`` prints the port.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

HOST = "127.0.0.1"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path = Path(".")
    die_on: str = ""
    break_on: str = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _send(self, status: int, headers: dict[str, str], payload: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if payload and self.command == "GET":
            self.wfile.write(payload)

    def _serve(self, body: bool) -> None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        if body and self.die_on and self.die_on in rel:
            os._exit(0)  # the server is gone, mid-run (a HEAD, as a stat at start-up, is answered)
        target = (self.root / rel).resolve()
        if target != self.root and self.root not in target.parents:
            return self._send(403, {"Content-Length": "0"})
        if target.is_dir():
            links = "".join(
                f'<a href="{quote(p.name)}{"/" if p.is_dir() else ""}">{html.escape(p.name)}</a>\n'
                for p in sorted(target.iterdir())
            )
            page = f"<html><body>\n{links}</body></html>\n".encode()
            return self._send(200, {"Content-Type": "text/html", "Content-Length": str(len(page))}, page)
        if not target.is_file():
            return self._send(404, {"Content-Length": "0"})
        size = target.stat().st_size
        start, stop, status = 0, size, 200
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        m = _RANGE.match(self.headers.get("Range", "").strip())
        if m and (m.group(1) or m.group(2)):
            a, b = m.group(1), m.group(2)
            if a:
                start, stop = int(a), min(size, int(b) + 1) if b else size
            else:
                start, stop = max(0, size - int(b)), size
            if start >= size:
                return self._send(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        headers["Content-Length"] = str(stop - start)
        self._send(status, headers)
        if not body:
            return
        if self.break_on and self.break_on in rel:
            stop, self.close_connection = start + (stop - start) // 2, True
        with open(target, "rb") as fh:
            fh.seek(start)
            left = stop - start
            while left > 0:
                chunk = fh.read(min(left, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


def _serve_http(root: str, port: int, die_on: str, break_on: str = "") -> None:
    RangeHandler.root = Path(root).resolve()
    RangeHandler.die_on, RangeHandler.break_on = die_on, break_on
    server = ThreadingHTTPServer((HOST, port), RangeHandler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


# --------------------------------------------------------------------------- for the tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing answers on {HOST}:{port}")


class Server:
    """A server child process; ``stop()`` kills exactly that PID."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_port(port, self.proc)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait(timeout=30)
        if self.proc.stderr:
            self.proc.stderr.close()


def http_server(root: Path, port: int | None = None, die_on: str = "", break_on: str = "") -> Server:
    port = port or free_port()
    argv = [sys.executable, __file__, "http", str(root), "--port", str(port)]
    if die_on:
        argv += ["--die-on", die_on]
    if break_on:
        argv += ["--break-on", break_on]
    return Server(argv, port)


def s3_server(port: int | None = None) -> Server:
    port = port or free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    argv = [exe] if exe else [sys.executable, "-m", "moto.server"]
    return Server([*argv, "-H", HOST, "-p", str(port)], port)


def s3_env(server: Server) -> dict[str, str]:
    """What a featdump process needs to reach the moto server through s3fs (the standard variables)."""
    return {
        "AWS_ENDPOINT_URL": server.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["http"])
    ap.add_argument("root")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--die-on", default="")
    ap.add_argument("--break-on", default="")
    a = ap.parse_args()
    _serve_http(a.root, a.port, a.die_on, a.break_on)
