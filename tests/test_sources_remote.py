"""Remote INPUTs through fsspec (docs/inputs.md, remote storage), against real servers on
127.0.0.1 started here and stopped by PID (tests/servers.py): an HTTP server with range requests,
and moto's S3 server through the real s3fs client. The same shards, tables and folders read
remotely give the numbers of the local run; a missing remote shard or a missing protocol package
is a usage error before the model loads; a server that goes away mid-run ends with exit 1 and
``--resume`` completes the file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import Server, http_server, s3_env, s3_server
from streamkit import (
    argv,
    assert_same_features,
    extract_in_worker_processes,
    features,
    images_in_order,
    write_parquet,
    write_shards,
)

from featdump.data import remote

from conftest import invoke
from faultkit import NO_MODEL, make_images, run


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, random_checkpoint) -> dict:
    root = tmp_path_factory.mktemp("remote")
    images = make_images(root / "images", 12, seed=11, broken=(4,))
    shards = write_shards(images, root / "shards", per_shard=4)  # 3 shards
    ckpt = random_checkpoint("resnet18")
    local = root / "local.h5"
    res = invoke(*argv(str(root / "shards" / "data-{000000..000002}.tar"), local, ckpt))
    assert res.exit_code == 0, res.output
    folder = root / "folder.h5"
    res = invoke(*argv(str(images), folder, ckpt))
    assert res.exit_code == 0, res.output
    return {"root": root, "images": images, "shards": shards, "ckpt": ckpt, "tar": features(local), "folder": features(folder)}


@pytest.fixture(scope="module")
def http(data: dict) -> Iterator[Server]:
    server = http_server(data["root"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(data: dict) -> Iterator[dict[str, str]]:
    pytest.importorskip("s3fs")
    server = s3_server()
    env = s3_env(server)
    try:
        import s3fs

        fs = s3fs.S3FileSystem(
            key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"], endpoint_url=env["AWS_ENDPOINT_URL"],
            skip_instance_cache=True,
        )  # fmt: skip
        fs.mkdir("bucket")
        for shard in data["shards"]:
            fs.put_file(str(shard), f"bucket/shards/{shard.name}")
        yield env
    finally:
        server.stop()


def _same_rows_as(got: dict, want: dict, local: Path, prefix: str) -> None:
    """Same features, ids and failures; paths are the local ones with the folder ``local`` replaced."""
    local = str(local)
    assert [p.replace(local, prefix) for p in want["paths"]] == got["paths"]
    assert got["ids"] == want["ids"] and got["failed_ids"] == want["failed_ids"]
    assert [p.replace(local, prefix) for p in want["failed"]] == got["failed"]
    assert_same_features(got, want)


# --------------------------------------------------------------------------- tar shards


@pytest.mark.slow
def test_tar_shards_over_http_equal_the_local_run(cli, data: dict, http: Server, tmp_path: Path) -> None:
    out = tmp_path / "http.h5"
    result = cli(*argv(f"{http.url}/shards/data-{{000000..000002}}.tar", out, data["ckpt"]))
    assert result.exit_code == 0, result.output
    got = features(out)
    assert got["paths"][0] == f"{http.url}/shards/data-000000.tar/{data['tar']['ids'][0]}.png"
    _same_rows_as(got, data["tar"], data["root"], http.url)


@pytest.mark.slow
def test_tar_shards_over_s3_equal_the_local_run(data: dict, s3: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "s3.h5"
    proc = run(argv("s3://bucket/shards/data-{000000..000002}.tar", out, data["ckpt"]), env=s3)
    assert proc.returncode == 0, proc.stderr
    _same_rows_as(features(out), data["tar"], data["root"], "s3://bucket")


def test_file_urls_read_like_local_paths(cli, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "file.h5"
    shards = f"file://{data['root']}/shards/data-{{000000..000002}}.tar"
    result = cli(*argv(shards, out, data["ckpt"]))
    assert result.exit_code == 0, result.output
    _same_rows_as(features(out), data["tar"], data["root"], f"file://{data['root']}")


def test_missing_remote_shard_is_a_usage_error_before_the_model_loads(
    cli, data: dict, http: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "o.h5"
    result = cli(*argv(f"{http.url}/shards/data-{{000000..000003}}.tar", out, data["ckpt"], model=NO_MODEL))
    assert result.exit_code == 2, result.output
    assert f"tar shard not found: {http.url}/shards/data-000003.tar (from the pattern" in result.output
    assert not out.exists()
    result = cli(*argv(f"{http.url}/gone.parquet", out, data["ckpt"], model=NO_MODEL))
    assert result.exit_code == 2 and f"input not found: {http.url}/gone.parquet" in result.output


@pytest.mark.slow
def test_a_missing_s3_bucket_is_not_found_at_once(
    cli, data: dict, s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto answers NoSuchBucket (s3fs: a FileNotFoundError caused by botocore's ClientError): "not
    found", a usage error before the model loads, not a store to retry (4 tries, ~5 s, then exit 1)."""
    from types import SimpleNamespace

    import s3fs

    def no_retry(seconds: float) -> None:
        raise AssertionError("a 'not found' answer was retried")

    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # the client reads the endpoint from the environment above
    monkeypatch.setattr(remote, "STOPPING", SimpleNamespace(is_set=lambda: False, wait=no_retry))  # the back-off wait
    out = tmp_path / "o.h5"
    for url, message in [
        ("s3://nobucket/shards/data-{000000..000001}.tar", "tar shard not found: s3://nobucket/shards/data-000000.tar"),
        ("s3://nobucket/urls.parquet", "input not found: s3://nobucket/urls.parquet"),
        ("s3://bucket/shards/data-000009.tar", "tar shard not found: s3://bucket/shards/data-000009.tar"),  # no such key
    ]:
        result = cli(*argv(url, out, data["ckpt"], model=NO_MODEL))
        assert result.exit_code == 2, result.output
        assert message in result.output, result.output
        assert not out.exists()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize(
    "url, module, extra",
    [
        ("s3://bucket/data-{0..2}.tar", "s3fs", "s3"),
        ("https://example.invalid/x.parquet", "aiohttp", "http"),
        ("gs://bucket/images/", "gcsfs", "gcs"),
        ("hf://datasets/org/name/x.parquet", "huggingface_hub", "hf"),
    ],
)
def test_a_missing_protocol_package_names_the_extra(
    cli, data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # "not installed": its import fails
    result = cli(*argv(url, tmp_path / "o.h5", data["ckpt"]))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"pip install 'featdump[{extra}]'" in lines[0] and module in lines[0], result.output


@pytest.mark.slow
def test_a_remote_folder_of_tar_shards_says_how_to_give_them(cli, data: dict, http: Server, tmp_path: Path) -> None:
    result = cli(*argv(f"{http.url}/shards/", tmp_path / "o.h5", data["ckpt"]))
    assert result.exit_code == 2, result.output
    assert f"it holds 3 tar shards (WebDataset): give them as INPUTs, e.g. '{http.url}/shards/data-{{000000..000002}}.tar'" in result.output


# --------------------------------------------------------------------------- tables, folders, lists


def test_parquet_of_image_bytes_over_http(cli, data: dict, http: Server, tmp_path: Path) -> None:
    write_parquet(data["images"], data["root"] / "hf.parquet", struct=True, row_group_size=4)
    out = tmp_path / "pq.h5"
    result = cli(*argv(f"{http.url}/hf.parquet", out, data["ckpt"], "--image-column", "image", "--id-column", "id"))
    assert result.exit_code == 0, result.output
    got, want = features(out), data["folder"]
    assert got["paths"] == want["paths"] and got["failed"] == want["failed"]
    assert_same_features(got, want)


def test_table_of_urls_over_http_one_404_is_a_failed_record(cli, data: dict, http: Server, tmp_path: Path) -> None:
    order = images_in_order(data["images"])
    rels = [p.relative_to(data["root"]).as_posix() for p in order]
    urls = [f"{http.url}/{r}" for r in rels]
    table = data["root"] / "urls.csv"
    table.write_text("url\n" + "\n".join([*urls, f"{http.url}/images/gone.png"]) + "\n")
    out = tmp_path / "urls.h5"
    result = cli(*argv(f"{http.url}/urls.csv", out, data["ckpt"]))
    assert result.exit_code == 0, result.output
    got, want = features(out), data["folder"]
    assert got["paths"] == [f"{http.url}/images/{p}" for p in want["paths"]]
    assert got["failed"] == [f"{http.url}/images/{p}" for p in want["failed"]] + [f"{http.url}/images/gone.png"]
    assert "not found" in got["errors"][-1] and f"{http.url}/images/gone.png" in got["errors"][-1]
    assert_same_features(got, want)


@pytest.mark.slow
def test_folder_list_and_image_urls_over_http(cli, data: dict, http: Server, tmp_path: Path) -> None:
    out = tmp_path / "folder.h5"
    result = cli(*argv(f"{http.url}/images/", out, data["ckpt"]))
    assert result.exit_code == 0, result.output
    got, want = features(out), data["folder"]
    assert got["paths"] == want["paths"] and got["failed"] == want["failed"]
    assert_same_features(got, want)
    listing = data["root"] / "list.txt"  # relative entries: read next to the list, in the list's order
    listing.write_text("\n".join(f"images/{p}" for p in reversed(want["paths"])) + "\n")
    out = tmp_path / "list.h5"
    result = cli(*argv(f"{http.url}/list.txt", out, data["ckpt"]))
    assert result.exit_code == 0, result.output
    got = features(out)
    assert got["paths"] == [f"images/{p}" for p in reversed(want["paths"])]
    for name in want["features"]:
        assert (got["features"][name] == want["features"][name][::-1]).all()
    one = f"{http.url}/images/{want['paths'][0]}"
    result = cli(*argv(one, tmp_path / "one.h5", data["ckpt"]))
    assert result.exit_code == 0, result.output
    assert features(tmp_path / "one.h5")["paths"] == [one]


# --------------------------------------------------------------------------- the server goes away


def _dying_server(data: dict, tmp_path: Path) -> tuple[Path, Any, str]:
    """The shards served from ``tmp_path/www`` by a server that exits when the third is asked for:
    ``(root, server, pattern of the three shards)``."""
    root = tmp_path / "www"
    (root / "shards").mkdir(parents=True)
    for shard in data["shards"]:
        (root / "shards" / shard.name).write_bytes(shard.read_bytes())
    server = http_server(root, die_on="data-000002")
    return root, server, f"{server.url}/shards/data-{{000000..000002}}.tar"


@pytest.mark.slow
def test_server_gone_mid_run_exits_1_and_resume_completes(data: dict, tmp_path: Path) -> None:
    from faultkit import committed_rows

    root, server, pattern = _dying_server(data, tmp_path)
    port, out = server.port, tmp_path / "gone.h5"
    try:
        proc = run(argv(pattern, out, data["ckpt"]), timeout=240)
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("featdump: warning: disk space not checked"), proc.stderr  # remote shards: not counted up front
    assert len(lines) == 2 and "data-000002.tar" in lines[1] and "--resume" in lines[1], proc.stderr
    assert committed_rows(out)["inputs_done"] == 8  # the first two shards are kept
    server = http_server(root, port=port)  # the same address again
    try:
        proc = run(argv(pattern, out, data["ckpt"], "--resume"), timeout=240)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    got = features(out)
    assert got["attrs"]["complete"]
    _same_rows_as(got, data["tar"], data["root"], f"http://127.0.0.1:{port}")


@pytest.mark.slow
def test_a_shard_whose_body_always_breaks_is_a_failed_record(cli, data: dict, tmp_path: Path) -> None:
    """The host answers every request, but the second shard's body always breaks off half way: after
    its retries the shard's rest is one /failed record naming it, the next shard is read, the run
    ends as one with failures (exit 0, complete), and --resume has nothing left to read."""
    server = http_server(data["root"], break_on="data-000001")
    out = tmp_path / "broken.h5"
    try:
        result = cli(*argv(f"{server.url}/shards/data-{{000000..000002}}.tar", out, data["ckpt"]))
        assert result.exit_code == 0, result.output
        again = cli(*argv(f"{server.url}/shards/data-{{000000..000002}}.tar", out, data["ckpt"], "--resume"))
        assert again.exit_code == 0, again.output
    finally:
        server.stop()
    got, want = features(out), data["tar"]
    assert got["attrs"]["complete"] and got["failed"] == [f"{server.url}/shards/data-000001.tar@0"]
    shard = got["failed"][0].removesuffix("@0")
    assert got["errors"][0].startswith(f"rest of the shard unreadable from byte 0 (cannot read {shard} (")
    assert got["errors"][0].endswith("; 4 tries))")
    kept = [i for i, p in enumerate(want["paths"]) if "data-000001" not in p]  # the first and the third shard
    assert got["paths"] == [want["paths"][i].replace(str(data["root"]), server.url) for i in kept]
    for name in want["features"]:  # other batches than the local run's: equal to float32 rounding
        np.testing.assert_allclose(got["features"][name], want["features"][name][kept], rtol=1e-4, atol=1e-5)


def test_remote_shards_are_looked_up_concurrently_in_order(data: dict, http: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of remote shards: their sizes are asked for STAT_THREADS at a time, not one
    round trip after another; results (and the first failure) stay in the shards' order."""
    import threading

    names = [f"{http.url}/shards/{s.name}" for s in data["shards"]]
    got = remote.stat_inputs([names[0], f"{http.url}/shards/nope.tar", *names[1:]])
    assert got[:1] + got[2:] == [s.stat().st_size for s in data["shards"]]
    assert isinstance(got[1], FileNotFoundError)

    barrier = threading.Barrier(4, timeout=30)  # passes only when 4 lookups are under way together
    plain = remote.stat_input

    def meeting(path: str) -> int:
        barrier.wait()
        return plain(path)

    monkeypatch.setattr(remote, "stat_input", meeting)
    many = [names[k % len(names)] for k in range(8)]
    assert remote.stat_inputs(many) == [data["shards"][k % len(names)].stat().st_size for k in range(8)]


def test_remote_reads_are_bounded_and_retried(data: dict, http: Server) -> None:
    shard = f"{http.url}/shards/data-000000.tar"
    assert remote.stat_input(shard) == data["shards"][0].stat().st_size
    with remote.open_input(shard) as fh:
        assert fh.fh.blocksize == remote.BLOCK_SIZE  # read-ahead of one bounded block
        assert fh.read(512) == data["shards"][0].read_bytes()[:512]
    with pytest.raises(FileNotFoundError):
        remote.stat_input(f"{http.url}/shards/nope.tar")


@pytest.mark.slow
def test_server_gone_with_dataloader_workers_commits_what_they_read(data: dict, tmp_path: Path) -> None:
    """GPU runs decode in DataLoader worker processes, which take batches of refs ahead of the
    job: those read before the store went away are written and committed before exit 1."""
    from faultkit import committed_rows

    root, server, pattern = _dying_server(data, tmp_path)
    port, out = server.port, tmp_path / "gone.h5"
    try:  # 2 workers, 2 batches of 4 ahead each: the first two shards are read ahead
        error = extract_in_worker_processes(pattern, out, data["ckpt"])
    finally:
        server.stop()
    assert "data-000002.tar" in error and "--resume" in error, error
    assert committed_rows(out)["inputs_done"] == 8  # every sample of the first two shards
    server = http_server(root, port=port)
    try:
        assert extract_in_worker_processes(pattern, out, data["ckpt"], resume=True) == ""
    finally:
        server.stop()
    got = features(out)
    assert got["attrs"]["complete"]
    _same_rows_as(got, data["tar"], data["root"], f"http://127.0.0.1:{port}")
