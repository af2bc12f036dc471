"""One image URL's bytes (a table's or a list's entry): at most ``--max-image-bytes``, within the
request deadline and retries of featdump/data/remote.py, given up at a stop request. A body that
breaks off after the answer began is the host answering (a dead link after its retries), never "the
store stopped answering".
"""

from __future__ import annotations

import zlib
from typing import Any

from featdump.data.remote import (
    MAX_IMAGE_BYTES,
    RemoteUnreachable,
    StoreStopped,
    filesystem,
    host_of,
    retry,
    scheme,
    too_big,
    unless_stopped,
    why_failed,
)


async def _http_get(fs: Any, url: str, cap: int) -> bytes:
    """One HTTP body, read up to ``cap`` bytes (an endless body is cut there). Asked for unencoded;
    a gzip or deflate answer anyway is inflated here up to ``cap`` too (a bomb is cut, not inflated)."""
    kw = {**fs.kwargs, "auto_decompress": False}
    kw["headers"] = {**kw.get("headers", {}), "Accept-Encoding": "identity"}
    session = await fs.set_session()
    async with session.get(fs.encode_url(url), **kw) as r:
        fs._raise_not_found_for_status(r, url)
        body = bytearray()
        try:
            async for chunk in r.content.iter_any():
                body += chunk
                if len(body) > cap:
                    raise ValueError(too_big(f"the answer from {url}", cap))
        except Exception as exc:  # noqa: BLE001 - cut off, timed out: the host answered, this body broke
            if isinstance(exc, ValueError):
                raise
            raise _BodyCut(r.status, f"the answer broke off after {len(body)} bytes: {why_failed(exc)}") from None
        encoding = r.headers.get("Content-Encoding", "identity").lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, found by zlib
        body = bytearray(inflate.decompress(bytes(body), cap + 1))
        if len(body) > cap or inflate.unconsumed_tail:
            raise ValueError(too_big(f"the answer from {url} ({encoding}-encoded)", cap))
    return bytes(body)


class _BodyCut(OSError):
    """A body that broke off after the answer began: the host answered (``status``, see :func:`~featdump.data.remote.no_answer`)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _read_capped(fs: Any, inner: str, url: str, cap: int) -> bytes:
    if scheme(url) in ("http", "https"):
        from fsspec.asyn import sync

        return sync(fs.loop, unless_stopped, _http_get(fs, inner, cap))
    with fs.open(inner, "rb") as fh:
        if (getattr(fh, "size", None) or 0) > cap:
            raise ValueError(too_big(f"{url} ({fh.size} bytes)", cap))
        data = bytes(fh.read(cap + 1))
    if len(data) > cap:
        raise ValueError(too_big(url, cap))
    return data


def fetch_bytes(url: str, answered: set[str] | None = None, cap: int = MAX_IMAGE_BYTES) -> bytes:
    """One remote image, at most ``cap`` bytes (more: ValueError); ``FileNotFoundError`` for "not
    found", else :class:`RemoteUnreachable`. ``answered``: hosts that answered so far this run, updated
    here; no answer from one of them raises :class:`StoreStopped`. One set serves all decode threads
    (``set.add`` is atomic); each DataLoader worker has its own copy."""
    fs, inner = filesystem(url)
    host = host_of(url)
    seen = answered if answered is not None else set()
    try:
        data = bytes(retry(url, lambda: _read_capped(fs, inner, url, cap), hint=False))
    except FileNotFoundError:
        seen.add(host)
        raise FileNotFoundError(2, "not found", url) from None
    except StoreStopped:
        raise
    except RemoteUnreachable as exc:
        if exc.answered:
            seen.add(host)
        elif host in seen:
            raise StoreStopped(f"{exc}; {host} answered earlier in this run, so the store stopped answering") from None
        raise
    seen.add(host)
    return data
