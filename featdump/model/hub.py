"""Fail fast without a network: one short probe of the Hugging Face endpoint before a download.

Without it, a ``--pretrained`` run without internet waited ~52 s of huggingface_hub's silent retries.
When the probe fails, the download runs in huggingface_hub's offline mode (``HF_HUB_OFFLINE``, only
inside the ``with`` block): cached weights load as before, missing ones fail at once in one line.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

PROBE_SECONDS = 3.0


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Can a TCP connection to the hub's host be opened within ``timeout`` seconds (name lookup included)?"""
    parts = urlsplit(hub_endpoint())
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="featdump-hub-probe", daemon=True)  # getaddrinfo has no timeout
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


@contextlib.contextmanager
def offline_unless_reachable(active: bool = True) -> Iterator[bool]:
    """Inside: huggingface_hub in offline mode when the hub cannot be reached (yields whether it is)."""
    from huggingface_hub import constants

    if not active or constants.HF_HUB_OFFLINE or hub_reachable():
        yield bool(constants.HF_HUB_OFFLINE)
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = old
