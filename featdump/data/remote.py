"""The one place where input files (tar shards, tables, lists, images) are opened and looked at.

Every source that reads an INPUT goes through :func:`open_input`, :func:`stat_input` (or
:func:`stat_inputs` for many) (and :func:`fetch_bytes` for one image), so remote storage lives here and
nowhere else. A URL (``https://``, ``s3://``, ``gs://``, ``hf://``, ``file://``) is opened with
``fsspec``: streamed through a read-ahead cache of :data:`BLOCK_SIZE` bytes (memory per open file
is bounded; nothing is fetched whole to disk), with a bounded number of retries for a read that
fails. Credentials and endpoints come from where each client normally finds them (``AWS_*`` /
``AWS_ENDPOINT_URL`` for s3fs, ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs, ``HF_TOKEN`` for
``hf://``) and from fsspec's own configuration (``FSSPEC_<PROTOCOL>_<OPTION>`` variables). A
missing protocol package is a :class:`~featdump.errors.UsageError` naming the extra to install.

A store that stops answering while a stream is read raises :class:`RemoteUnreachable` (a
:class:`~featdump.errors.FeatdumpError`, exit 1, not an ``OSError``): the tar reader must not take
a lost connection for a damaged shard. One image URL that fails is a dead link (a ``/failed``
record), unless no answer came (refused, reset, timed out, name not found) from a host that did
answer earlier in the run: then the store stopped answering and :func:`fetch_bytes` raises
:class:`StoreStopped`, which ends the run before that image so ``--resume`` tries it again.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from featdump.errors import FeatdumpError, UsageError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

BLOCK_SIZE = 4 << 20  # read-ahead per open remote file (bytes): the memory one stream holds
RETRIES = 3  # further tries of a failed remote read (a "not found" is not retried)
BACKOFF = 0.5  # seconds before the first retry, doubled for each next one
CONNECT_TIMEOUT = 20.0  # seconds to connect
READ_TIMEOUT = 60.0  # seconds without data before a read fails (then retried)
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
_NO_ANSWER = frozenset(
    {
        "ClientConnectionError",  # aiohttp: refused, reset, DNS, server disconnected, timeouts
        "ClientPayloadError",  # aiohttp: the connection dropped in the middle of the body
        "EndpointConnectionError",  # botocore (s3fs)
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ProxyConnectionError",
    }
)


def no_answer(exc: BaseException | None) -> bool:
    """Whether a failure is at the connection level (refused, reset, timed out, name not found:
    aiohttp's, botocore's and the OS's errors, through the exception's causes); an HTTP error
    status is an answer, not this."""
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
    from urllib.parse import urlsplit

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
            "timeout": aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
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


class _Retrying:
    """A read-only file over an fsspec file: a failed read is retried (from the same position) up to
    :data:`RETRIES` times, then raises :class:`RemoteUnreachable`."""

    def __init__(self, url: str, fh: Any) -> None:
        self.url, self.fh = url, fh

    def read(self, n: int = -1) -> bytes:
        at = self.fh.tell()
        return _retry(self.url, lambda: self._read_at(at, n))

    def _read_at(self, at: int, n: int) -> bytes:
        if self.fh.tell() != at:
            self.fh.seek(at)
        return bytes(self.fh.read(n))

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return int(self.fh.seek(pos, whence))

    def tell(self) -> int:
        return int(self.fh.tell())

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return bool(self.fh.closed)

    @property
    def size(self) -> int:
        return int(self.fh.size)

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> _Retrying:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _retry(url: str, call: Any, hint: bool = True) -> Any:
    """``call()``, tried again after a failure (not after "not found") up to :data:`RETRIES` times."""
    delay = BACKOFF
    for attempt in range(RETRIES + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - every client has its own errors (aiohttp, botocore, ...)
            if isinstance(exc, FileNotFoundError) and _really_not_found(exc):
                raise
            if attempt == RETRIES:
                from featdump.text import first_line

                cause = exc.__cause__ if isinstance(exc, FileNotFoundError) and exc.__cause__ else exc
                why = first_line(cause)
                again = f"; {RESUME_HINT}" if hint else ""
                message = f"cannot read {url} ({why}; {RETRIES + 1} tries){again}"
                raise RemoteUnreachable(message, answered=not no_answer(cause)) from None
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def open_input(path: str) -> BinaryIO:
    """A binary file object reading ``path`` from its start (caller closes it).

    Raises ``FileNotFoundError``/``OSError`` as ``open`` does; a URL is streamed (read-ahead of
    :data:`BLOCK_SIZE` bytes, retried reads).
    """
    if not is_url(path):
        return open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    fs, inner = filesystem(path)
    fh = _retry(path, lambda: fs.open(inner, "rb", block_size=BLOCK_SIZE, cache_type="readahead"))
    return _Retrying(path, fh)  # type: ignore[return-value]


def stat_input(path: str) -> int:
    """The size in bytes of the input file ``path`` (``FileNotFoundError`` when it does not exist)."""
    if not is_url(path):
        return os.stat(path).st_size
    fs, inner = filesystem(path)
    info = _retry(path, lambda: fs.info(inner), hint=False)
    if info.get("type") == "directory":
        raise IsADirectoryError(21, "a folder, not a file", path)
    return int(info.get("size") or 0)


def stat_inputs(paths: Sequence[str]) -> list[int | OSError]:
    """:func:`stat_input` of each path, in order: its size, or the ``OSError`` it raised (other
    errors propagate). URLs are looked up :data:`STAT_THREADS` at a time: one round trip each, so
    thousands of remote tar shards do not wait for each other's answers before the run starts."""

    def one(path: str) -> int | OSError:
        try:
            return stat_input(path)
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
        return bool(_retry(url, lambda: fs.isdir(inner), hint=False))
    except FileNotFoundError:
        return False


def list_remote(url: str) -> list[tuple[str, str]]:
    """``(path relative to the folder, full URL)`` of every file below the folder URL, recursively."""
    fs, inner = filesystem(url)
    root = inner.rstrip("/")
    found = _retry(url, lambda: fs.find(root), hint=False)
    out = []
    for p in found:
        rel = p[len(root) :].lstrip("/") if p.startswith(root) else p
        out.append((rel, url.rstrip("/") + "/" + rel))
    return out


def fetch_bytes(url: str, answered: set[str] | None = None) -> bytes:
    """The whole of one remote image (timeouts, :data:`RETRIES` retries); ``FileNotFoundError``
    when the store answers "not found", :class:`RemoteUnreachable` when it fails otherwise.

    ``answered``: the hosts (:func:`host_of`) that have answered so far in this run, kept up to date
    here. A URL that gets no answer at all (:func:`no_answer`) from one of them raises
    :class:`StoreStopped`: the store stopped answering, the run must stop. Not thread-local: one
    set serves the decode threads (``set.add`` is atomic), and each DataLoader worker its own copy."""
    fs, inner = filesystem(url)
    host = host_of(url)
    seen = answered if answered is not None else set()
    try:
        data = bytes(_retry(url, lambda: fs.cat_file(inner), hint=False))
    except FileNotFoundError:
        seen.add(host)
        raise FileNotFoundError(2, "not found", url) from None
    except RemoteUnreachable as exc:
        if exc.answered:
            seen.add(host)
        elif host in seen:
            raise StoreStopped(
                f"{exc}; {host} answered earlier in this run, so the store stopped answering"
            ) from None
        raise
    seen.add(host)
    return data
