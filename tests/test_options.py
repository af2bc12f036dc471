"""Option parsing and the one precedence rule: defaults < config file < flags."""

from __future__ import annotations

import pytest

from featdump.configure import resolve
from featdump.errors import UsageError
from featdump.options import ExtractConfig
from featdump.values import parse_img_size, parse_indices, parse_shard

BASE = {"model": "resnet18", "inputs": ("imgs",), "output": "o.h5"}


@pytest.mark.parametrize(
    "raw,want",
    [("1,2,-1", (1, 2, -1)), ([0, 3], (0, 3)), (" 4 ", (4,)), (None, None), ("", None)],
)
def test_parse_indices(raw, want):
    assert parse_indices(raw) == want


@pytest.mark.parametrize("raw", ["a", "1,1", "1.5", ","])
def test_parse_indices_rejects(raw):
    with pytest.raises(UsageError):
        parse_indices(raw)


@pytest.mark.parametrize(
    "raw,want", [(224, (224, 224)), ("224", (224, 224)), ("256x320", (256, 320)), ([256, 320], (256, 320))]
)
def test_parse_img_size(raw, want):
    assert parse_img_size(raw) == want


@pytest.mark.parametrize("raw", ["0", "2x", "huge", "100000", [1, 2, 3]])
def test_parse_img_size_rejects(raw):
    with pytest.raises(UsageError):
        parse_img_size(raw)


def test_parse_shard():
    assert parse_shard("2/8") == (2, 8)
    for bad in ("8/8", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_precedence_defaults_file_flags():
    cfg = resolve(dict(BASE), {})
    assert cfg == ExtractConfig(model="resnet18", inputs=("imgs",), output="o.h5")
    from_file = {"dtype": "float16", "pool": "avg", "out_indices": [1, 2], "batch_size": 4}
    cfg = resolve({**BASE, "pool": "max"}, from_file)
    assert (cfg.dtype, cfg.pool, cfg.out_indices, cfg.batch_size) == ("float16", "max", (1, 2), 4)


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"dtype": "int8"}, "--dtype must be one of float32|float16"),
        ({"output_stride": 12}, "--output-stride must be one of 8|16|32"),
        ({"batch_size": 0}, "--batch-size must be a whole number >= 1"),
        ({"resume": True, "overwrite": True}, "exclude each other"),
        ({"out_indices": "1", "layers": "layer1"}, "exclude each other"),
        ({"pretrained": "yes"}, "true or false"),
    ],
)
def test_resolve_rejects(extra, needle):
    with pytest.raises(UsageError, match=needle):
        resolve({**BASE, **extra})


def test_fast_decode_and_gpu_decode_exclude_each_other() -> None:
    from featdump.errors import UsageError

    with pytest.raises(UsageError, match="exclude each other"):
        resolve({"model": "resnet18", "inputs": ("x",), "output": "o.h5", "fast_decode": True, "decode": "gpu"})
