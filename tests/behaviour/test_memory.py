"""Bounded memory: peak RSS does not grow with the number of images."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_images(tmp_path: Path, photos: Path) -> None:
    """Peak RSS of a run over 8x the images stays within 10% (no accumulation anywhere)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from bench.memory import peak_rss

    sources = sorted(photos.glob("*.jpg"))
    peaks = {}
    for n in (16, 128):
        folder = tmp_path / f"many{n}"
        folder.mkdir()
        for i in range(n):
            (folder / f"i{i:04d}.jpg").symlink_to(sources[i % len(sources)])
        peaks[n] = peak_rss(
            "resnet18", folder, tmp_path / "rss.h5", ["--no-pretrained", "--img-size", "96", "--device", "cpu"]
        )
    assert peaks[128] <= 1.1 * peaks[16], peaks
