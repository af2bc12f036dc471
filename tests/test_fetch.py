"""`featdump fetch` through the cache-hit path, and `extract --pretrained` offline from that cache.

No test downloads: the test writes a Hugging Face hub cache the way huggingface_hub lays it out
(blobs/ named by hash, snapshots/<commit>/ links, refs/main) holding timm's own export of a resnet18
with seeded random weights, then checks the layout with huggingface_hub's own lookup.
Commands run as real processes, because huggingface_hub reads HF_HOME once, at import.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clusterkit import FAST, make_images, read
from conftest import run

REPO = "timm/resnet18.a1_in1k"  # where timm looks for resnet18's default pretrained weights
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(hub: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """``hub/models--org--name/{blobs,snapshots/<commit>,refs/main}`` as huggingface_hub writes it."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory, random_checkpoint: Any) -> Path:
    import timm
    from huggingface_hub import try_to_load_from_cache
    from safetensors.torch import load_file
    from timm.models import save_for_hf

    home = tmp_path_factory.mktemp("hf-home")
    export = tmp_path_factory.mktemp("export")
    model = timm.create_model("resnet18", pretrained=False)
    model.load_state_dict(load_file(str(random_checkpoint("resnet18"))))
    save_for_hf(model, str(export), safe_serialization=True)  # config.json + model.safetensors, timm's export
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]
    write_hub_cache(home / "hub", REPO, {p.name: p for p in export.iterdir()})
    found = try_to_load_from_cache(REPO, "model.safetensors", cache_dir=str(home / "hub"))
    assert isinstance(found, str) and Path(found).resolve().read_bytes() == (export / "model.safetensors").read_bytes()
    return home


def env(home: Path) -> dict[str, str]:
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.mark.slow
def test_fetch_finds_cached_weights_says_where_and_fails_clearly_offline(hf_home: Path) -> None:
    proc = run("fetch", "resnet18", "resnet34", "hf-hub:timm/resnet18.a1_in1k", env=env(hf_home))
    snapshot = hf_home / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / COMMIT
    size = (snapshot / "model.safetensors").resolve().stat().st_size
    lines = proc.stdout.splitlines()
    assert lines[0] == f"resnet18: resnet18.a1_in1k (hf-hub:{REPO}) {size / 1e6:.1f} MB, already cached"
    assert lines[1].strip() == str(snapshot / "model.safetensors")
    assert lines[2].startswith("hf-hub:timm/resnet18.a1_in1k: resnet18.a1_in1k (hf-hub:timm/resnet18.a1_in1k)")
    assert lines[3].strip() == str(snapshot / "model.safetensors")
    # resnet34 is not in the cache: a clear line, the others are still fetched, exit 1
    assert proc.returncode == 1
    assert (
        f"featdump: error: resnet34: timm/resnet34.a1_in1k is not in the Hugging Face cache ({hf_home / 'hub'}) "
        "and HF_HUB_OFFLINE=1 forbids downloading; run `featdump fetch resnet34` where there is internet, "
        "with the same HF_HOME"
    ) in proc.stderr
    assert "1 of 3 model(s) not fetched" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_fetch_cache_hit_exits_zero(hf_home: Path) -> None:
    proc = run("fetch", "resnet18", "--quiet", env=env(hf_home))
    assert proc.returncode == 0, proc.stderr
    snapshot = hf_home / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / COMMIT
    assert proc.stdout == f"{snapshot / 'model.safetensors'}\n"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet18.nope", "unknown pretrained tag 'nope' for resnet18"),
        ("resnt18", "unknown model 'resnt18'"),
        ("local-dir:/models/x", "reads its weights from a local folder"),
    ],
)
def test_fetch_refuses_names_before_downloading_anything(cli: Any, name: str, message: str) -> None:
    result = cli("fetch", "resnet18", name)
    assert result.exit_code == 2
    assert message in result.output
    assert "resnet18: resnet18.a1_in1k" not in result.output  # nothing was fetched first


@pytest.mark.slow
def test_extract_pretrained_offline_loads_the_fetched_weights(
    hf_home: Path, tmp_path: Path, cli: Any, random_checkpoint: Any
) -> None:
    images = make_images(tmp_path / "images", 3)
    out = tmp_path / "hub.h5"
    proc = run("extract", "resnet18", str(images), "-o", str(out), "--pretrained", *FAST, env=env(hf_home))
    assert proc.returncode == 0, proc.stderr
    hub = read(out)
    assert re.fullmatch(r"pretrained:resnet18\.a1_in1k \(hf-hub:timm/resnet18\.a1_in1k\)", hub["attrs"]["weights"])
    # the same weights given as a file give the same numbers
    ref = tmp_path / "file.h5"
    result = cli("extract", "resnet18", str(images), "-o", str(ref), "--checkpoint", str(random_checkpoint("resnet18")), *FAST)
    assert result.exit_code == 0, result.output
    want = read(ref)
    assert hub["paths"] == want["paths"]
    for name, values in want["features"].items():
        np.testing.assert_allclose(hub["features"][name], values, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_extract_pretrained_offline_without_cache_points_to_fetch(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", 1)
    empty = tmp_path / "empty-hf"
    proc = run("extract", "resnet18", str(images), "-o", str(tmp_path / "o.h5"), "--pretrained", *FAST, env=env(empty))
    assert proc.returncode == 1
    assert "featdump fetch resnet18" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.h5").exists()
    shutil.rmtree(empty, ignore_errors=True)
