"""The job loop (featdump/run/job.py) with stages handed in: an in-memory source of image bytes and a
stub backbone (one average-pool layer, no timm model), written by the real store. Fast: no model load."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from featdump.configure import resolve
from featdump.data.discover import ImageRef
from featdump.data.sources import Selection
from featdump.errors import FeatdumpError, Interrupted
from featdump.model.layers import Backbone, DataConfig, LayerInfo
from featdump.run.job import Stages, run_extraction
from featdump.run.results import ProgressSink
from featdump.run.signals import StopToken

BROKEN = 3  # this position holds no image


def _png(i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (20 + 2 * i, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


REFS = [ImageRef(f"img{i}.png", f"mem://img{i}.png", id=f"k{i}", data=b"not a png" if i == BROKEN else _png(i)) for i in range(7)]


class _Memory(Selection):
    """The refs, from memory; with ``fail_at``, the stream breaks when it reaches that position."""

    has_ids = True

    def __init__(self, fail_at: int | None) -> None:
        super().__init__("digest", len(REFS), "digest", len(REFS), len(REFS))
        self.fail_at = fail_at

    def stream(self, done: int = 0, mark: Sequence[int] | None = None) -> Iterator[ImageRef]:
        for i in range(done, len(REFS)):
            if i == self.fail_at:
                raise FeatdumpError("the store went away")
            yield REFS[i]

    def select(self, index: int, count: int) -> Selection:
        return self


class _Pool(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.nn.functional.avg_pool2d(x, 4)]


DATA = DataConfig((3, 16, 16), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bilinear", 1.0, "center")


def _stages(fail_at: int | None = None) -> Stages:
    layer = LayerInfo("pool", "pool", 0, 3, 4, (3, 4, 4))
    stub = Backbone("stub", _Pool(), [layer], DATA, (0,), None, "stub weights")
    return Stages(source=lambda inputs, cfg: _Memory(fail_at), backbone=lambda cfg: stub)


def _cfg(out: Path, **options: Any) -> Any:
    given = {"model": "resnet18", "inputs": ("mem://",), "output": str(out), "device": "cpu", "batch_size": 2}
    return resolve({**given, "workers": 1, "quiet": True, "space_check": False, **options})


def _expected(i: int) -> np.ndarray:
    """What timm's eval transform and the stub compute for image ``i``."""
    from PIL import Image

    pixels = DATA.transform()(Image.open(io.BytesIO(REFS[i].data or b"")).convert("RGB"))
    return _Pool()(pixels[None])[0][0].numpy()


def _rows(path: Path) -> dict[str, Any]:
    with h5py.File(path) as f:
        return {
            "paths": [p.decode() for p in f["paths"][:]],
            "ids": [p.decode() for p in f["ids"][:]],
            "features": f["features/pool"][:],
            "failed": [p.decode() for p in f["failed/paths"][:]],
            "inputs_done": int(f.attrs["inputs_done"]),
            "complete": bool(f.attrs["complete"]),
        }


def test_rows_in_list_order_with_the_failure_recorded(tmp_path: Path) -> None:
    summary = run_extraction(_cfg(tmp_path / "o.h5"), stages=_stages())
    assert (summary.num_images, summary.num_failed) == (6, 1)
    got = _rows(tmp_path / "o.h5")
    good = [i for i in range(7) if i != BROKEN]
    assert got["paths"] == [f"img{i}.png" for i in good] and got["ids"] == [f"k{i}" for i in good]
    assert got["failed"] == [f"img{BROKEN}.png"] and got["inputs_done"] == 7 and got["complete"]
    for row, i in zip(got["features"], good, strict=True):
        np.testing.assert_allclose(row, _expected(i), rtol=1e-6, atol=1e-6)


class _StopAfterFirstBatch(ProgressSink):
    def __init__(self, stop: StopToken) -> None:
        self.token = stop

    def advance(self, images: int) -> None:
        self.token.request(signal.SIGTERM)


def test_a_stop_request_ends_after_the_batch_with_it_committed(tmp_path: Path) -> None:
    stop = StopToken()
    with pytest.raises(Interrupted, match="after committing 2 images") as info:
        run_extraction(_cfg(tmp_path / "o.h5"), _StopAfterFirstBatch(stop), stop=stop, stages=_stages())
    assert info.value.exit_code == 128 + signal.SIGTERM
    got = _rows(tmp_path / "o.h5")
    assert got["paths"] == ["img0.png", "img1.png"] and got["inputs_done"] == 2 and not got["complete"]


def test_a_stream_error_mid_run_commits_the_whole_batches_before_it_and_resume_completes(tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    with pytest.raises(FeatdumpError, match="the store went away"):
        run_extraction(_cfg(out), stages=_stages(fail_at=5))
    got = _rows(out)
    assert got["inputs_done"] == 4 and not got["complete"]  # position 4's cut batch is dropped
    assert got["paths"] == ["img0.png", "img1.png", "img2.png"] and got["failed"] == [f"img{BROKEN}.png"]
    run_extraction(_cfg(out, resume=True), stages=_stages())
    run_extraction(_cfg(tmp_path / "clean.h5"), stages=_stages())
    resumed, clean = _rows(out), _rows(tmp_path / "clean.h5")
    assert resumed["paths"] == clean["paths"] and resumed["failed"] == clean["failed"] and resumed["complete"]
    assert np.array_equal(resumed["features"], clean["features"])  # bit-identical


class _Fixed(torch.nn.Module):
    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.values.expand(len(x), *self.values.shape[1:])]


@pytest.mark.parametrize(
    ("values", "count"),
    [
        ([3e38, 3e38, 1.0, 2.0], 0),  # finite values whose float32 sum overflows: none counted
        ([float("nan"), 1.0, 2.0, 3.0], 1),
        ([float("inf"), float("-inf"), 1.0, 2.0], 2),  # their sum is NaN, not inf
        ([1.0, 2.0, 3.0, 4.0], 0),
    ],
)
def test_nonfinite_values_are_counted_exactly(values: list[float], count: int) -> None:
    from featdump.run.forward import Forward

    layer = LayerInfo("fixed", "fixed", 0, 1, 1, (1, 2, 2))
    stub = Backbone("stub", _Fixed(torch.tensor(values).view(1, 1, 2, 2)), [layer], DATA, (0,), None, "stub weights")
    forward = Forward(stub, torch.device("cpu"), "fp32", "none", "float32", False)
    forward(torch.zeros(3, 3, 16, 16))
    assert forward.nonfinite() == [3 * count]
