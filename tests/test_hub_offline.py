"""No network and the default --pretrained: the run fails within seconds with one line, instead of
waiting through the hub's retries; `featdump fetch` likewise, without the retry noise. The hub is an
unreachable local endpoint (a closed port on 127.0.0.1), HF_HUB_OFFLINE unset."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import run

UNREACHABLE = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.slow
def test_extract_fails_fast_without_a_hub(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "x.h5"
    t0 = time.monotonic()
    proc = run("extract", "resnet18", str(photos), "-o", str(out), "--img-size", "64", env=UNREACHABLE)
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not get pretrained weights for resnet18" in lines[0], proc.stderr
    assert "featdump fetch resnet18" in lines[0]
    assert took < 30, took  # the hub's retries took ~52 s, plus start-up on a loaded machine


@pytest.mark.slow
def test_fetch_fails_fast_and_quietly_without_a_hub(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = run("fetch", "resnet18", env=UNREACHABLE)
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    assert "Retry" not in proc.stderr and "retry" not in proc.stderr.lower(), proc.stderr
    assert "cannot be reached" in proc.stderr and "127.0.0.1:9" in proc.stderr, proc.stderr
    assert took < 30, took


def test_probe() -> None:
    import os

    from featdump.model.hub import hub_reachable, offline_unless_reachable

    old = os.environ.get("HF_ENDPOINT")
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
    try:
        assert not hub_reachable(1.0)
        from huggingface_hub import constants

        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = False
        try:
            with offline_unless_reachable() as off:
                assert off and constants.HF_HUB_OFFLINE
            assert constants.HF_HUB_OFFLINE is False
        finally:
            constants.HF_HUB_OFFLINE = before
    finally:
        if old is None:
            del os.environ["HF_ENDPOINT"]
        else:
            os.environ["HF_ENDPOINT"] = old
