"""Tables of image URLs (LAION / img2dataset style) against a real HTTP server on 127.0.0.1
(tests/servers.py): a dead link (an HTTP error, or a host that never answered) is a ``/failed``
record and the run goes on; a host that answered and then stops answering ends the run with exit 1
before the image it could not fetch, with every earlier row committed, and ``--resume`` (the server
back) gives the rows of a clean run. Decoding in threads (CPU) and in DataLoader workers (GPUs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from servers import free_port, http_server
from streamkit import argv, assert_same_features, extract_in_worker_processes, features, images_in_order

from featdump.data import imagefetch, remote
from featdump.data.datasets import Stop, collate

from faultkit import committed_rows, make_images


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, random_checkpoint) -> dict:
    root = tmp_path_factory.mktemp("urls")
    images = make_images(root / "images", 24, seed=5)
    rels = [p.relative_to(root).as_posix() for p in images_in_order(images)]
    return {"root": root, "rels": rels, "ckpt": random_checkpoint("resnet18")}


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "BACKOFF", 0.01)  # the same tries, without seconds of waiting


def url_table(path: Path, urls: list[str]) -> Path:
    path.write_text("url,id\n" + "".join(f"{u},{k}\n" for k, u in enumerate(urls)))
    return path


def test_a_stop_empties_its_batch() -> None:
    """The images before the stop in its batch are not written either: the run ends on a batch
    boundary, so --resume's batches (and values, to the bit) are those of an uninterrupted run."""
    ok = [(k, _pixels(), "", (8, 8)) for k in range(4)]
    batch = collate([ok[0], (1, None, "OSError: broken", None), ok[2], (3, None, Stop("gone"), None)])
    assert (batch.positions, batch.failed, batch.pixels, batch.first, batch.last) == ([], [], None, 0, -1)
    assert batch.stopped == "gone"
    assert collate(ok).stopped == "" and collate(ok).last == 3


def _pixels() -> Any:
    import torch

    return torch.zeros(3, 8, 8)


@pytest.mark.slow
def test_fetch_bytes_knows_which_hosts_answered(data: dict, quick_retries: None) -> None:
    server = http_server(data["root"])
    good, host = f"{server.url}/{data['rels'][0]}", remote.host_of(server.url)
    dead = f"http://127.0.0.1:{free_port()}/x.png"  # nothing listens there
    answered: set[str] = set()
    try:
        with pytest.raises(FileNotFoundError):
            imagefetch.fetch_bytes(f"{server.url}/images/gone.png", answered)  # a 404 is an answer
        assert answered == {host}
        assert imagefetch.fetch_bytes(good, answered) == (data["root"] / data["rels"][0]).read_bytes()
        with pytest.raises(remote.RemoteUnreachable) as dead_link:
            imagefetch.fetch_bytes(dead, answered)  # never answered: a dead link, not a stopped store
        assert not isinstance(dead_link.value, remote.StoreStopped) and not dead_link.value.answered
        assert "4 tries" in str(dead_link.value)
    finally:
        server.stop()
    with pytest.raises(remote.StoreStopped, match="answered earlier in this run, so the store stopped answering"):
        imagefetch.fetch_bytes(good, answered)
    with pytest.raises(remote.RemoteUnreachable) as fresh:
        imagefetch.fetch_bytes(good, set())  # another run (or worker) that never reached it: a failure record
    assert not isinstance(fresh.value, remote.StoreStopped)


@pytest.mark.slow
def test_a_dead_host_among_good_ones_is_one_failed_record(cli, data: dict, tmp_path: Path, quick_retries: None) -> None:
    server = http_server(data["root"])
    dead = f"http://127.0.0.1:{free_port()}/x.jpg"
    urls = [f"{server.url}/{r}" for r in data["rels"][:6]]
    table = url_table(tmp_path / "urls.csv", [*urls[:3], dead, *urls[3:]])
    out = tmp_path / "urls.h5"
    try:
        result = cli(*argv(str(table), out, data["ckpt"], "--id-column", "id"))
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    got = features(out)
    assert got["attrs"]["complete"] and got["paths"] == urls
    assert got["failed"] == [dead] and got["failed_ids"] == ["3"]
    assert got["errors"][0].startswith("RemoteUnreachable: cannot read " + dead) and "Cannot connect" in got["errors"][0]


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["threads", "workers"])
def test_a_store_that_stops_answering_ends_the_run_and_resume_completes(
    cli, data: dict, tmp_path: Path, quick_retries: None, decode: str
) -> None:
    server = http_server(data["root"], die_on=Path(data["rels"][13]).name)  # exits at the 14th image's GET
    port = server.port
    urls = [f"{server.url}/{r}" for r in data["rels"]]
    table = url_table(tmp_path / "urls.csv", urls)
    out = tmp_path / "u.h5"
    try:
        if decode == "workers":
            error = extract_in_worker_processes(str(table), out, data["ckpt"], id_column="id")
        else:
            result = cli(*argv(str(table), out, data["ckpt"], "--id-column", "id"))
            assert result.exit_code == 1, result.output
            error = [line for line in result.output.splitlines() if line.strip()][-1]
    finally:
        server.stop()
    assert "stopped answering" in error and "--resume" in error, error
    rows = committed_rows(out)
    done = rows["inputs_done"]
    assert done in (4, 8, 12), rows  # whole batches of 4 (the first at least), none holding the 14th image
    got = features(out)
    assert not got["attrs"]["complete"]
    assert got["failed"] == [] and got["paths"] == urls[:done]  # nothing recorded as failed

    server = http_server(data["root"], port=port)  # back, at the same address
    try:
        clean = tmp_path / "clean.h5"
        if decode == "workers":
            assert extract_in_worker_processes(str(table), out, data["ckpt"], id_column="id", resume=True) == ""
            assert extract_in_worker_processes(str(table), clean, data["ckpt"], id_column="id") == ""
        else:
            for path, resume in ((out, ("--resume",)), (clean, ())):
                result = cli(*argv(str(table), path, data["ckpt"], "--id-column", "id", *resume))
                assert result.exit_code == 0, result.output
    finally:
        server.stop()
    got, want = features(out), features(clean)
    assert got["attrs"]["complete"] and got["failed"] == [] and len(got["paths"]) == 24
    assert got["paths"] == want["paths"] and got["ids"] == want["ids"]
    assert_same_features(got, want)
