"""Every meaning option of the option table, run for real: a file made with the option's example
value (a value other than the default) is reproduced exactly by ``--like`` (same attributes, same
bytes in every row), passes ``verify``, and a run with the default value is refused by ``--resume``
and ``merge`` (through the check ``--resume`` runs). The cases are the table's own rows: an option
added later is covered with no new test.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import featdump
from featdump.errors import UsageError
from featdump.options import OPTIONS, SETTINGS
from featdump.run.verify import verify_file
from featdump.store.check import check_same_settings
from featdump.store.format import setting_text
from featdump.store.merge import merge_shards

pytestmark = pytest.mark.filterwarnings("ignore::featdump.errors.FeatdumpWarning")
MEANING = [o for o in OPTIONS if o.meaning]
BASE = {"pretrained": False, "img_size": 64, "out_indices": (4,), "batch_size": 2, "quiet": True}
TOGETHER = {"tile_scale": {"tiles": 64}, "max_side": {"img_size": "native"}}  # options that mean something only beside another one


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, photos: Path, random_checkpoint: Any) -> dict[str, Any]:
    """Three small JPEGs as a folder, as a Parquet table (paths, image bytes, ids) and as a tar shard
    (with a ``cls`` member), a checkpoint."""
    from streamkit import hand_tar

    root = tmp_path_factory.mktemp("like_table")
    folder = root / "imgs"
    folder.mkdir()
    rows = []
    for name, size in (("chelsea.jpg", (72, 48)), ("coffee.jpg", (50, 80))):
        buf = io.BytesIO()
        Image.open(photos / name).convert("RGB").resize(size).save(buf, "JPEG", quality=90)
        (folder / name).write_bytes(buf.getvalue())
        rows.append({"path": f"imgs/{name}", "where": f"imgs/{name}", "key": name[:-4],
                     "jpeg": {"bytes": buf.getvalue(), "path": name}})  # fmt: skip
    table = root / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    members = [(f"{p.stem}.{ext}", data) for p in sorted(folder.iterdir()) for ext, data in (("jpg", p.read_bytes()), ("cls", b"1"))]
    tar = hand_tar(root / "t.tar", members)
    made = {"files": folder, "table": table, "tar": tar, "checkpoint": random_checkpoint("test_resnet")}
    for family in ("files", "table", "tar"):  # the same inputs with every option at its default
        featdump.extract("test_resnet", made[family], root / f"{family}.h5", **BASE)
        made[f"base:{family}"] = root / f"{family}.h5"
    return made


def _value(option: Any, inputs: dict[str, Any]) -> Any:
    return str(inputs["checkpoint"]) if option.name == "checkpoint" else option.example


def _run(inputs: dict[str, Any], out: Path, option: Any, **over: Any) -> Path:
    kw = {**BASE, **TOGETHER.get(option.name, {}), **over}
    if option.name in ("out_indices", "layers"):
        kw.pop("out_indices")
    model = kw.pop("model", "test_resnet")
    featdump.extract(model, inputs[option.family or "files"], out, **kw)
    return out


def _rows(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f["features"][name][:] for name in f["features"]}


@pytest.mark.parametrize("option", MEANING, ids=[o.name for o in MEANING])
def test_like_and_verify_reproduce_every_meaning_option(option: Any, inputs: dict[str, Any], tmp_path: Path) -> None:
    value = _value(option, inputs)
    assert value is not None and value != option.default, f"{option.name}: the table declares no example value"
    if option.name == "decode" and not torch.cuda.is_available():
        pytest.skip("--decode gpu needs a CUDA device")
    made = _run(inputs, tmp_path / "a.h5", option, **{option.name: value})

    # --like: only the model (a required argument) and execution flags are given
    with h5py.File(made, "r") as f:
        model = str(f.attrs["model"])
        attrs = dict(f.attrs)
    again = tmp_path / "b.h5"
    featdump.extract(model, inputs[option.family or "files"], again, like=made, quiet=True, batch_size=2)
    with h5py.File(again, "r") as f:
        for key in SETTINGS:
            assert setting_text(f.attrs.get(key)) == setting_text(attrs.get(key)), key
    want, got = _rows(made), _rows(again)
    assert list(want) == list(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    report = verify_file(made, n=2, device="cpu")
    assert report.ok, (option.name, report)

    # the same inputs with the option at its default: merge and --resume's check name the setting
    if option.name == "pretrained":  # the base runs without weights already; the checkpoint case covers it
        return
    other = inputs[f"base:{option.family or 'files'}"]
    if option.name in TOGETHER:  # the base: the companion options, this one at its default
        other = _run(inputs, tmp_path / "base.h5", option)
    both = {"out_indices": "out_indices|layers", "layers": "out_indices|layers", "max_side": "max_side|input_size"}  # native: N x N
    named = both.get(option.name, option.attr)
    with pytest.raises(UsageError, match=named):
        merge_shards([made, other], tmp_path / "m.h5")
    with h5py.File(other, "r") as f:
        base_attrs = dict(f.attrs)
    with h5py.File(made, "r") as h5, pytest.raises(UsageError, match=rf"--resume: .* made with ({named})="):
        check_same_settings(h5, base_attrs, made)


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
def test_like_on_the_command_line_keeps_crop_and_size(inputs: dict[str, Any], tmp_path: Path) -> None:
    """The trial's case: squash + crop_pct 1.0 + a non-square size, then --like, then verify."""
    from conftest import run

    made, again = tmp_path / "a.h5", tmp_path / "b.h5"
    flags = ["--no-pretrained", "--out-indices", "4", "--crop-mode", "squash", "--crop-pct", "1.0", "--img-size", "96x64"]
    run("extract", "test_resnet", str(inputs["files"]), "-o", str(made), "-q", *flags, check=True)
    run("extract", "test_resnet", str(inputs["files"]), "-o", str(again), "-q", "--like", str(made), check=True)
    with h5py.File(again, "r") as f:
        assert (f.attrs["crop_mode"], float(f.attrs["crop_pct"]), list(f.attrs["input_size"])) == ("squash", 1.0, [3, 96, 64])
    np.testing.assert_array_equal(_rows(again)["layer4"], _rows(made)["layer4"])
    res = run("verify", str(made), "-n", "2")
    assert res.returncode == 0, res.stderr
    res = run("extract", "test_resnet", str(inputs["files"]), "-o", str(tmp_path / "c.h5"), "--like", str(made),
              "--crop-mode", "center")  # fmt: skip
    assert res.returncode == 2
    assert "--crop-mode center changes what the rows mean (the file has --crop-mode squash)" in res.stderr


def test_like_takes_the_files_levels_typed_in_any_order(inputs: dict[str, Any], tmp_path: Path) -> None:
    """``--like A --out-indices 4,2`` on a file made with 2,4: the model returns levels 2 and 4 in its own
    order, so the rows are the same and the run goes on; a level the file lacks is still refused."""
    from typer.testing import CliRunner

    from featdump.cli.commands import app

    made = tmp_path / "a.h5"
    featdump.extract("test_resnet", inputs["files"], made, **{**BASE, "out_indices": (2, 4)})
    base = ["extract", "test_resnet", str(inputs["files"]), "--like", str(made), "--device", "cpu", "-q"]
    again = tmp_path / "b.h5"
    res = CliRunner().invoke(app, [*base, "-o", str(again), "--out-indices", "4,2"])
    assert res.exit_code == 0, res.output
    want, got = _rows(made), _rows(again)
    assert list(got) == list(want) == ["layer2", "layer4"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    res = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "c.h5"), "--out-indices", "4,3"])
    assert res.exit_code == 2 and "--out-indices 4,3 changes what the rows mean (the file has --out-indices 2,4)" in res.output


def test_like_and_verify_take_a_tokens_both_file(inputs: dict[str, Any], tmp_path: Path) -> None:
    """``--tokens both`` stores ``<name>.prefix`` beside each module's map: ``--like`` and ``verify``
    rebuild the modules, not the datasets (they asked the model for a module 'blocks.0.prefix')."""
    kw = {k: v for k, v in BASE.items() if k != "out_indices"}
    made = tmp_path / "a.h5"
    featdump.extract("test_vit", inputs["files"], made, layers=("blocks.0",), tokens="both", **kw)
    again = tmp_path / "b.h5"
    featdump.extract("test_vit", inputs["files"], again, like=made, quiet=True)
    want, got = _rows(made), _rows(again)
    assert list(got) == list(want) == ["blocks.0", "blocks.0.prefix"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert verify_file(made, n=2, device="cpu").ok
