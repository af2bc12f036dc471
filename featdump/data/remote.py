"""The one place where input files (tar shards, tables, lists, images) are opened and looked at.

URLs are opened with ``fsspec`` (credentials where each client finds them; docs/inputs.md);
``file://`` is a local path. Only HTTP gets featdump's retries (:func:`retry`): s3fs, gcsfs and
huggingface_hub retry on their own. A store that stops answering raises :class:`RemoteUnreachable`,
not ``OSError``: the tar reader must not take a lost connection for a damaged shard.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import stat
import threading
from collections.abc import Sequence
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from featdump.environment import REQUEST_SECONDS
from featdump.errors import FeatdumpError, UsageError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

BLOCK_SIZE = 4 << 20  # read-ahead per open remote file (bytes): the memory one stream holds
RETRIES = 3  # further tries of a failed remote read (a "not found" is not retried)
BACKOFF = 0.5  # seconds before the first retry, doubled for each next one
CONNECT_TIMEOUT = 20.0  # seconds to connect
READ_TIMEOUT = 60.0  # seconds without data before a read fails (then retried)
MAX_IMAGE_BYTES = 256 << 20  # --max-image-bytes' default: the most one image (member, body, file) may hold
HEAD_BYTES = 4096  # what :func:`identity` hashes of a local file's start
STAT_THREADS = 16  # remote inputs looked up at once before a run (stat_inputs)

# scheme -> (the module fsspec needs, the extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
    "hf": ("huggingface_hub", "hf"),
}


RESUME_HINT = "rerun the same command with --resume to continue from the last commit"
# set by a stop request (run/signals.py): HTTP reads under way give up within a quarter second
STOPPING = threading.Event()


class RemoteUnreachable(FeatdumpError):
    """A remote store failed while featdump was reading from it (after the retries). ``answered``:
    the last try got an answer (an HTTP error status), not a connection-level failure."""

    def __init__(self, message: str, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


class StoreStopped(RemoteUnreachable):
    """An image URL got no answer from a host that answered earlier in this run: the store stopped
    answering, so the run stops before this image (rather than record it, and every later one, as failed)."""


# the classes (by name, in any client's hierarchy) of a failure that got no answer from the server
_NO_ANSWER = {
    "ClientConnectionError",  # aiohttp: refused, reset, DNS, server disconnected, timeouts
    "EndpointConnectionError",  # botocore (s3fs)
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyConnectionError",
}


def no_answer(exc: BaseException | None) -> bool:
    """Whether a failure (or one of its causes) is at the connection level; an HTTP error status is an answer."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "status", None) is not None:  # aiohttp's ClientResponseError: the server answered
            return False
        if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if any(cls.__name__ in _NO_ANSWER for cls in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def host_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL (for ``s3://`` and ``gs://``: the bucket)."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def is_url(path: str) -> bool:
    """True for ``scheme://...`` (an fsspec URL), False for a local path."""
    return bool(_URL.match(path))


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _options(protocol: str) -> dict[str, Any]:
    """Timeouts for the clients that take them; the user's fsspec configuration wins."""
    import fsspec.config

    opts: dict[str, Any] = {}
    if protocol in ("http", "https"):
        import aiohttp

        opts["client_kwargs"] = {
            "timeout": aiohttp.ClientTimeout(
                total=REQUEST_SECONDS.value(), sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            )
        }
    elif protocol in ("s3", "s3a"):
        opts["config_kwargs"] = {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}
    opts.update(fsspec.config.conf.get(protocol, {}))
    return opts


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for ``url``; UsageError for a missing extra or an
    unknown scheme."""
    import fsspec

    protocol = scheme(url)
    need = EXTRAS.get(protocol)
    try:
        if need is not None:
            __import__(need[0])
        return fsspec.core.url_to_fs(url, **_options(protocol))
    except ImportError as exc:  # fsspec names the package of a protocol featdump has no extra for
        hint = f"reading {protocol}:// URLs needs {need[0]}: pip install 'featdump[{need[1]}]'" if need else str(exc)
        raise UsageError(f"{url}: {hint.splitlines()[0]}") from None
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise UsageError(f"{url}: {str(exc).splitlines()[0]}") from None


def local_path(path: str) -> str | None:
    """The local path ``path`` names (itself, or a ``file://`` URL's path); None for a remote URL."""
    if not is_url(path):
        return path
    return path[len("file://") :] if scheme(path) == "file" else None


def too_big(what: str, cap: int) -> str:
    return f"{what} holds more than --max-image-bytes ({cap} bytes); raise it if this is a real image"


def check_regular(st: os.stat_result, cap: int | None = None, empty: bool = False) -> None:
    """Only regular files (non-empty unless ``empty``; at most ``cap`` bytes) are read: a FIFO or a
    device could block for ever, or never end."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (FIFO, socket or device)")
    if st.st_size == 0 and not empty:
        raise OSError(errno.EINVAL, "empty file (0 bytes)")
    if cap is not None and st.st_size > cap:
        raise OSError(errno.EFBIG, too_big(f"the file ({st.st_size} bytes)", cap))


def open_regular(path: str, cap: int | None = None, empty: bool = False) -> BinaryIO:
    """A local file opened for reading after :func:`check_regular` (before and after the open:
    ``O_NONBLOCK`` makes a path swapped for a FIFO in between return instead of wait)."""
    check_regular(os.stat(path), cap, empty)  # never open a FIFO or device: that could block or have effects
    fh = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))  # noqa: SIM115 - the caller closes it
    try:
        check_regular(os.fstat(fh.fileno()), cap, empty)
    except BaseException:
        fh.close()
        raise
    return fh


class _Retrying:
    """A read-only file over an fsspec HTTP file: a failed read is retried (from the same position)
    up to :data:`RETRIES` times, then raises :class:`RemoteUnreachable`; the rest is the file's."""

    def __init__(self, url: str, fh: Any) -> None:
        self.url, self.fh = url, fh

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)

    def read(self, n: int = -1) -> bytes:
        at = self.fh.tell()
        return retry(self.url, lambda: self._read_at(at, n))

    def _read_at(self, at: int, n: int) -> bytes:
        if self.fh.tell() != at:
            self.fh.seek(at)
        return bytes(self.fh.read(n))

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def __enter__(self) -> _Retrying:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


_NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "NotFound", "404", "410"})  # botocore's error codes


def _really_not_found(exc: FileNotFoundError) -> bool:
    """fsspec's HTTP client says "not found" for any failed HEAD/GET: a refused connection is not
    a missing file. Only an answer counts as "not found": no cause at all, HTTP 404/410 (aiohttp's
    ``status``, gcsfs's ``code``), or botocore's ``NoSuchBucket``/``NoSuchKey``/404 (s3fs turns a
    missing bucket into a FileNotFoundError caused by botocore's ClientError)."""
    cause = exc.__cause__
    if cause is None or isinstance(cause, FileNotFoundError):
        return True
    if getattr(cause, "status", None) in (404, 410) or getattr(cause, "code", None) in (404, 410):
        return True
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in _NOT_FOUND_CODES or status in (404, 410)
    return False


def why_failed(exc: BaseException) -> str:
    """One line for a failed request (aiohttp's redirect loop says only ``0, message='', url=...``)."""
    from featdump.text import first_line

    if type(exc).__name__ == "TooManyRedirects":
        return "too many redirects: a redirect loop"
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no complete answer within {REQUEST_SECONDS.value():g} s (FEATDUMP_REQUEST_SECONDS)"
    return first_line(exc)


def retry(url: str, call: Any, hint: bool = True) -> Any:
    """``call()``; for ``http(s)://`` tried again after a failure (not after "not found" or an
    over-cap body) up to :data:`RETRIES` times: the other clients retry on their own."""
    tries = RETRIES + 1 if scheme(url) in ("http", "https") else 1
    for attempt in range(tries):
        if STOPPING.is_set():  # a stop request (start-up too): no new try
            raise StoreStopped(f"stopped by a stop request before {url} answered")
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - every client has its own errors (aiohttp, botocore, ...)
            if isinstance(exc, (FeatdumpError, ValueError)) or isinstance(exc, FileNotFoundError) and _really_not_found(exc):
                raise
            if attempt == tries - 1:
                cause = exc.__cause__ if isinstance(exc, FileNotFoundError) and exc.__cause__ else exc
                counted = f"; {tries} tries" if tries > 1 else ""
                again = f"; {RESUME_HINT}" if hint else ""
                message = f"cannot read {url} ({why_failed(cause)}{counted}){again}"
                raise RemoteUnreachable(message, answered=not no_answer(cause)) from None
        STOPPING.wait(BACKOFF * 2**attempt)
    raise AssertionError("unreachable")


async def unless_stopped(job: Any) -> Any:
    """``await job``, given up (:class:`StoreStopped`) within a quarter second of a stop request."""
    import asyncio

    task = asyncio.ensure_future(job)
    while not task.done():
        await asyncio.wait({task}, timeout=0.25)
        if STOPPING.is_set() and not task.done():
            task.cancel()
            raise StoreStopped("stopped by a stop request while a remote read waited")
    return task.result()


def open_input(path: str) -> BinaryIO:
    """A binary file reading ``path`` (caller closes it); OSError as ``open``, also for a non-regular
    file. A URL is streamed through a :data:`BLOCK_SIZE` read-ahead cache, HTTP reads retried."""
    local = local_path(path)
    if local is not None:
        return open_regular(local, empty=True)
    fs, inner = filesystem(path)
    fh = retry(path, lambda: fs.open(inner, "rb", block_size=BLOCK_SIZE, cache_type="readahead"))
    if scheme(path) not in ("http", "https"):
        return fh
    if hasattr(fh, "async_fetch_range"):  # each block's request given up at a stop request
        from fsspec.asyn import sync

        fh.cache.fetcher = lambda start, end: sync(fs.loop, unless_stopped, fh.async_fetch_range(start, end))
    return _Retrying(path, fh)  # type: ignore[return-value]


def stat_input(path: str) -> int:
    """The size in bytes of the input file ``path`` (``FileNotFoundError`` when it does not exist;
    OSError for a local one that is not a regular file)."""
    local = local_path(path)
    if local is not None:
        st = os.stat(local)
        check_regular(st, empty=True)
        return st.st_size
    return int(_info(path).get("size") or 0)


def _info(path: str) -> dict[str, Any]:
    fs, inner = filesystem(path)
    if getattr(fs, "async_impl", False):  # http, s3, ...: the request given up at a stop request
        from fsspec.asyn import sync

        info = retry(path, lambda: sync(fs.loop, unless_stopped, fs._info(inner)), hint=False)
    else:
        info = retry(path, lambda: fs.info(inner), hint=False)
    if info.get("type") == "directory":
        raise IsADirectoryError(21, "a folder, not a file", path)
    return dict(info)


def identity(path: str) -> str:
    """What tells this input file from another one of the same name and size, without reading it
    whole: a local file's size, modification time and sha256 of its first :data:`HEAD_BYTES`; a
    remote one's size with the store's ``ETag``/``Last-Modified`` (a content hash on s3, gcs, hf)."""
    local = local_path(path)
    if local is None:
        info = _info(path)
        tags = [str(info.get(k, "")) for k in ("size", "ETag", "etag", "md5Hash", "LastModified", "Last-Modified", "mtime")]
        return ":".join(tags)
    with open_regular(local, empty=True) as fh:
        st = os.fstat(fh.fileno())
        return f"{st.st_size}:{st.st_mtime_ns}:{hashlib.sha256(fh.read(HEAD_BYTES)).hexdigest()}"


def stat_inputs(paths: Sequence[str], look: Any = stat_input) -> list[Any]:
    """``look(path)`` of each path in order, or the ``OSError`` it raised. URLs are looked up
    :data:`STAT_THREADS` at a time, so thousands of remote shards do not wait on each other's round trips."""

    def one(path: str) -> Any:
        try:
            return look(path)
        except OSError as exc:
            return exc

    if sum(1 for p in paths if is_url(p)) < 2:
        return [one(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(min(STAT_THREADS, len(paths)), thread_name_prefix="featdump-stat")
    try:
        return list(pool.map(one, paths))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error: the lookups under way end, no more start


def is_remote_dir(url: str) -> bool:
    """Whether the URL names a folder the store can list."""
    fs, inner = filesystem(url)
    try:
        return bool(retry(url, lambda: fs.isdir(inner), hint=False))
    except FileNotFoundError:
        return False


def list_remote(url: str) -> list[tuple[str, str]]:
    """``(path relative to the folder, full URL)`` of every file below the folder URL, recursively."""
    fs, inner = filesystem(url)
    root = inner.rstrip("/")
    found = retry(url, lambda: fs.find(root), hint=False)
    rels = [p[len(root) :].lstrip("/") if p.startswith(root) else p for p in found]
    return [(rel, url.rstrip("/") + "/" + rel) for rel in rels]
