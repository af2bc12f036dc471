"""``extract --ray``: shards as tasks on a real two-node Ray cluster on 127.0.0.1, merged at -o.

The cluster is a head and a second node, each started by ``ray start --block`` in a session of its
own (its own temp dir, ports and one CPU), so every process Ray starts for a node is found by its
session id and killed when the module ends; nothing talks to any address but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from featdump.run.onray import sees

from clusterkit import FAST, make_images, read
from conftest import ROOT, run

ARGS = ("resnet18", "--no-pretrained", *FAST, "--batch-size", "1")  # one image per batch: the same sums as one run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session(sid: int) -> list[int]:
    """Every live process of session ``sid`` (what one ``ray start --block`` started for its node)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
        if entry.name.isdigit() and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def _named(sid: int, name: str) -> list[int]:
    """The processes of session ``sid`` whose command line starts with ``name`` (Ray retitles a worker
    ``ray::TASK`` while it runs one)."""
    found = []
    for pid in _session(sid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].split(b"/")[-1].startswith(name.encode()):
                found.append(pid)
    return found


def _kill_session(sid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while _session(sid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _node(base: Path, name: str, head_port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    ports = {f"--{p}": str(_free_port()) for p in ("node-manager-port", "object-manager-port", "runtime-env-agent-port",
             "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port")}  # fmt: skip
    args = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
            "--num-gpus=0", f"--temp-dir={base / name}", "--disable-usage-stats", *(x for kv in ports.items() for x in kv)]  # fmt: skip
    if name == "head":
        args += ["--head", f"--port={head_port}", "--include-dashboard=false"]
    else:
        args += [f"--address=127.0.0.1:{head_port}"]
    log = (base / f"{name}.log").open("wb")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, object]]:
    """A head and a second node, one CPU each; node death is noticed within ~2 s (health checks)."""
    pytest.importorskip("ray")
    base = Path(tempfile.mkdtemp(prefix="fdray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
           "RAY_health_check_initial_delay_ms": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # fmt: skip
    port = _free_port()
    nodes = {"head": _node(base, "head", port, env)}
    try:
        probe = f"import ray; ray.init('127.0.0.1:{port}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        for want in (1, 2):
            deadline = time.monotonic() + 90
            while True:
                done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
                if done.stdout.strip() == str(want):
                    break
                alive = all(p.poll() is None for p in nodes.values())
                assert alive and time.monotonic() < deadline, (base / "head.log").read_text()[-3000:]
                time.sleep(1)
            if want == 1:
                nodes["second"] = _node(base, "second", port, env)
        yield {"address": f"127.0.0.1:{port}", "second": nodes["second"].pid, "env": env}
    finally:
        for proc in nodes.values():
            _kill_session(proc.pid)
            proc.wait(timeout=10)


def _ray_run(cluster: dict[str, object], imgs: Path, out: Path, *extra: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run("extract", *ARGS, str(imgs), "-o", str(out), "--ray", str(cluster["address"]), "--shards", "3", *extra,
               env=dict(cluster["env"]), timeout=300, **kw)  # type: ignore[arg-type]  # fmt: skip


def _same_rows(merged: Path, single: Path) -> None:
    m, s = read(merged), read(single)
    assert m["paths"] == s["paths"] and m["failed"] == s["failed"]
    assert list(m["features"]) == list(s["features"])
    for name, want in s["features"].items():
        np.testing.assert_array_equal(m["features"][name], want, err_msg=name)  # bit for bit


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Seven small images and one plain run over them."""
    folder = tmp_path_factory.mktemp("ray-inputs")
    imgs = make_images(folder / "imgs", 7)
    run("extract", *ARGS, str(imgs), "-o", str(folder / "single.h5"), check=True)
    return imgs, folder / "single.h5"


@pytest.mark.slow
def test_failed_shard_names_itself_and_a_rerun_redoes_only_it(cluster: dict[str, object], single: tuple[Path, Path], tmp_path: Path) -> None:
    imgs, one_run = single
    out = tmp_path / "out" / "f.h5"
    out.parent.mkdir()
    blocker = out.parent / "f.shard-00001-of-00003.h5"
    blocker.write_text("not a featdump file")  # shard 1 cannot resume it: it fails on every try
    failed = _ray_run(cluster, imgs, out, "--ray-retries", "1")
    assert failed.returncode == 1, failed.stderr
    assert "shard 1/3" in failed.stderr and "f.shard-00001-of-00003.h5" in failed.stderr and "after 1 retries" in failed.stderr
    assert not out.exists()
    finished = {p: p.stat().st_mtime_ns for p in out.parent.glob("f.shard-0000[02]-*.h5")}
    assert len(finished) == 2
    blocker.unlink()
    again = _ray_run(cluster, imgs, out)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # nothing finished was redone
    _same_rows(out, one_run)


@pytest.mark.slow
def test_killed_node_still_ends_with_one_runs_rows(cluster: dict[str, object], single: tuple[Path, Path], tmp_path: Path) -> None:
    """Runs last: it kills the second node's raylet, and with it that node."""
    imgs, one_run = single
    out = tmp_path / "f.h5"
    driver = subprocess.Popen([sys.executable, "-m", "featdump", "extract", *ARGS, str(imgs), "-o", str(out), "--ray",
                               str(cluster["address"]), "--shards", "3"], env=dict(cluster["env"]),  # type: ignore[arg-type]
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        second = int(cluster["second"])  # type: ignore[call-overload]
        while not (len(list(tmp_path.glob("f.shard-*.h5"))) >= 2 and _named(second, "ray::_shard")):  # mid-shard there
            assert time.monotonic() < deadline and driver.poll() is None, driver.poll()
            time.sleep(0.05)
        raylets = _named(second, "raylet")
        assert len(raylets) == 1
        os.kill(raylets[0], signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=240)
    finally:
        driver.kill()
    assert driver.returncode == 0, stderr
    _same_rows(out, one_run)


def test_ray_missing_is_a_usage_error_naming_the_extra(tmp_path: Path) -> None:
    imgs = make_images(tmp_path / "imgs", 2)
    code = "import sys; sys.modules['ray'] = None; from featdump.cli import main; sys.argv[0] = 'featdump'; main()"
    proc = subprocess.run([sys.executable, "-c", code, "extract", *ARGS, str(imgs), "-o", str(tmp_path / "f.h5"),
                           "--ray", "local", "--shards", "2"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "featdump[ray]" in proc.stderr
    assert not list(tmp_path.glob("f*.h5"))


@pytest.mark.parametrize(
    ("args", "says"),
    [(("--ray", "auto"), "--ray and --shards go together"), (("--shards", "3"), "--ray and --shards go together"),
     (("--ray", "auto", "--shards", "2", "--shard", "0/2"), "drop --shard"),
     (("--ray", "local", "--shards", "2", "-o", "f-{shard}.h5"), "not the template")],
)  # fmt: skip
def test_ray_options_that_do_not_fit_are_usage_errors(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    imgs = make_images(tmp_path / "imgs", 1)
    proc = run("extract", *ARGS, str(imgs), "-o", str(tmp_path / "f.h5"), *args)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr


def test_a_node_that_does_not_see_the_output_folder_says_so(tmp_path: Path) -> None:
    marker = tmp_path / ".featdump-ray-check"
    assert sees(str(marker), "t0ken") == f"cannot read {marker} (No such file or directory)"
    marker.write_text("another")
    assert sees(str(marker), "t0ken") == f"reads another file at {marker}"
    marker.write_text("t0ken")
    assert sees(str(marker), "t0ken") is None
