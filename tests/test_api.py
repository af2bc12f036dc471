"""The Python API: featdump.extract(...) and featdump.open(path); import featdump stays free of torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import featdump
from featdump.errors import UsageError


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, photos: Path, random_checkpoint) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("api") / "feats.h5"
    ckpt = random_checkpoint("resnet18")
    summary = featdump.extract(
        "resnet18", photos, out, out_indices=[1, -1], checkpoint=ckpt, img_size=64, dtype="float16", batch_size=3,
        quiet=True,
    )  # fmt: skip
    return out, summary


def test_extract_returns_the_summary(made: tuple[Path, object], photos: Path) -> None:
    out, summary = made
    assert summary.output == str(out) and summary.num_images == 8 and summary.complete
    assert [l.name for l in summary.layers] == ["layer1", "layer4"]
    assert summary.layers[0].shape == (64, 16, 16) and summary.layers[0].dtype == "float16"
    with h5py.File(out) as f:
        assert f.attrs["command"].startswith("featdump.extract('resnet18'")


def test_extract_same_numbers_as_the_command(
    cli, made: tuple[Path, object], photos: Path, tmp_path: Path, random_checkpoint
) -> None:
    out, _ = made
    other = tmp_path / "cli.h5"
    ckpt = str(random_checkpoint("resnet18"))
    res = cli("extract", "resnet18", str(photos), "-o", str(other), "--out-indices", "1,-1", "--checkpoint", ckpt,
              "--img-size", "64", "--dtype", "float16", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    with featdump.open(out) as a, featdump.open(other) as b:
        assert a.paths == b.paths and a.layers == b.layers
        for layer in a.layers:  # same weights, same images: identical numbers
            np.testing.assert_array_equal(a.numpy(layer), b.numpy(layer))


def test_extract_errors_are_typed(tmp_path: Path, photos: Path) -> None:
    with pytest.raises(UsageError, match="unknown model"):
        featdump.extract("resnet_does_not_exist", photos, tmp_path / "x.h5")
    with pytest.raises(UsageError, match="--pool must be one of"):
        featdump.extract("resnet18", photos, tmp_path / "x.h5", pool="median")


def test_open_reads_lazily(made: tuple[Path, object]) -> None:
    out, _ = made
    with featdump.open(out) as f:
        assert isinstance(f, featdump.FeatureFile)
        assert f.paths[:2] == ["astronaut.jpg", "camera.jpg"] and len(f) == 8
        assert f.layers == ["layer1", "layer4"] and "layer4" in f
        assert f.meta["model"] == "resnet18" and f.meta["format_version"] == 1 and f.complete
        ds = f["layer4"]
        assert isinstance(ds, h5py.Dataset) and ds.shape == (8, 512, 2, 2)
        row = f.row("coffee.jpg")
        assert f.paths[row] == "coffee.jpg"
        np.testing.assert_array_equal(f.numpy("layer4", row), ds[row])
        picked = f.numpy("layer4", [5, 0, 5])
        assert picked.shape == (3, 512, 2, 2) and picked.dtype == np.float16
        np.testing.assert_array_equal(picked[0], ds[5])
        np.testing.assert_array_equal(picked[1], ds[0])
        np.testing.assert_array_equal(f.numpy("layer1", slice(2, 4)), ds.parent["layer1"][2:4])
        np.testing.assert_array_equal(f.numpy("layer1", slice(None, None, -3)), ds.parent["layer1"][[1, 4, 7]][::-1])
        assert f.numpy("layer1").shape == (8, 64, 16, 16)
        assert f.attrs("layer1")["reduction"] == 4 and f.failed == []
        with pytest.raises(KeyError, match="layers: layer1, layer4"):
            f["layer9"]
        with pytest.raises(KeyError, match="not a stored path"):
            f.row("dog.jpg")
        with pytest.raises(IndexError):
            f.numpy("layer1", 8)
    assert not f.h5.id.valid  # closed by the with block


def test_open_refuses_other_files(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(UsageError, match="not a featdump file"):
        featdump.open(other)


def test_import_and_version_do_not_load_torch() -> None:
    code = (
        "import sys, featdump, featdump.cli\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'\n"
        "sys.argv = ['featdump', '--version']\n"
        "try:\n    featdump.cli.main()\nexcept SystemExit:\n    pass\n"
        "sys.argv = ['featdump', 'extract', '--help']\n"
        "try:\n    featdump.cli.main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --version/--help'\n"
        "print(featdump.open.__module__)\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("featdump ") and proc.stdout.rstrip().endswith("featdump.store.reader")


def test_typed_package() -> None:
    assert (Path(featdump.__file__).parent / "py.typed").exists()
    assert {"extract", "open", "FeatureFile"} <= set(featdump.__all__)
    assert {"extract", "open", "FeatureFile", "__version__"} <= set(dir(featdump))  # tab completion finds them


def test_viz_finds_the_inputs_of_an_api_run(cli, made: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = made
    res = cli("viz", str(out), "-o", str(tmp_path / "api.png"), "--image", "1")
    assert res.exit_code == 0, res.output
    assert res.stderr == ""  # the INPUT folder was read from the recorded featdump.extract(...) call


def test_extract_keywords_are_the_option_names() -> None:
    import inspect

    from featdump.options import OPTIONS

    params = inspect.signature(featdump.extract).parameters
    assert [o.name for o in OPTIONS if o.name not in params] == []  # derived: see test_options.py
    assert "quiet" in params and "progress" in params


def test_extract_shows_progress_when_asked(tmp_path: Path, photos: Path, random_checkpoint, capsys) -> None:
    summary = featdump.extract("resnet18", photos, tmp_path / "p.h5", out_indices=[-1], checkpoint=random_checkpoint("resnet18"),
                               img_size=64, progress=True)  # fmt: skip
    assert summary.num_images == 8
    err = capsys.readouterr().err
    assert err.endswith("\n") and "resnet18  8/8  100%" in err and "img/s" in err


@pytest.mark.slow  # a real featdump process (a few seconds)
def test_the_command_collects_garbage_while_it_runs(tmp_path: Path, photos: Path) -> None:
    """featdump's own process starts with garbage collection off, but every batch runs with it on."""
    code = (
        "import atexit, gc, sys\n"
        "import featdump.run.forward as forward\n"
        "seen, call = [], forward.Forward.__call__\n"
        "forward.Forward.__call__ = lambda self, x: seen.append(gc.isenabled()) or call(self, x)\n"
        "atexit.register(lambda: print('collecting', seen, gc.get_freeze_count() > 0))\n"
        f"sys.argv = ['featdump', 'extract', 'resnet18', {str(photos)!r}, '-o', {str(tmp_path / 'o.h5')!r}, '-q', "
        "'--no-pretrained', '--img-size', '32', '--out-indices', '-1', '--batch-size', '2', '--device', 'cpu']\n"
        "from featdump.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("collecting [True, True") and proc.stdout.rstrip().endswith("] True"), proc.stdout


def test_an_in_process_extract_leaves_the_garbage_collector_alone(cli, tmp_path: Path, photos: Path) -> None:
    """Only featdump's own process freezes the objects made before the run (a caller's stay collectable)."""
    import gc

    before = gc.get_freeze_count()
    args = ("resnet18", str(photos / "coins.jpg"), "--no-pretrained", "--img-size", "32", "--out-indices", "-1", "-q")
    assert cli("extract", *args, "-o", str(tmp_path / "o.h5")).exit_code == 0
    assert gc.get_freeze_count() == before and gc.isenabled()
