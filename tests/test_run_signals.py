"""The library's stop requests (featdump/run/signals.py) through the Python API, with real signals:
the core never prints or exits; a first SIGINT ends the run with ``Interrupted``, a second raises
``KeyboardInterrupt`` in the caller, and in both cases the process lives on and the file resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from featdump.run.signals import SignalWatch, StopToken

_SCRIPT = r"""
import json, os, signal, sys
import featdump
from featdump.errors import Interrupted
from featdump.run.results import ProgressSink

photos, out, times = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Kill(ProgressSink):
    sent = False
    def advance(self, images):
        if not Kill.sent:  # real signals to this process, from inside the batch loop
            Kill.sent = True
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)

outcome = "finished"
try:
    featdump.extract("resnet18", [photos], out, pretrained=False, batch_size=1, workers=0, progress=Kill())
except KeyboardInterrupt:
    outcome = "KeyboardInterrupt"
except Interrupted as exc:
    outcome = "Interrupted: " + str(exc)
handler_back = signal.getsignal(signal.SIGINT) is signal.default_int_handler
with featdump.open(out) as f:
    partial = (f.meta["num_images"], bool(f.complete))
summary = featdump.extract("resnet18", [photos], out, pretrained=False, resume=True)
with featdump.open(out) as f:
    rows = f.numpy(f.layers[-1], list(range(len(f.paths)))).tolist()
print(json.dumps({"outcome": outcome, "handler_back": handler_back, "partial": partial,
                  "complete": summary.complete, "rows": rows}))
"""


@pytest.fixture(scope="module")
def clean_rows(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> list:
    import featdump

    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    featdump.extract("resnet18", [str(photos)], str(out), pretrained=False)
    with featdump.open(out) as f:
        return f.numpy(f.layers[-1], list(range(len(f.paths)))).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("times", [1, 2])
def test_api_survives_sigint_and_resumes_to_the_clean_rows(tmp_path: Path, photos: Path, clean_rows: list, times: int):
    out = tmp_path / "feats.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(photos), str(out), str(times)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" or "Warning" in proc.stderr, proc.stderr  # the core printed nothing
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if times == 1:
        assert got["outcome"].startswith("Interrupted: stopped by SIGINT after committing"), got["outcome"]
    else:
        assert got["outcome"] == "KeyboardInterrupt", got["outcome"]
    assert got["handler_back"], "the caller's SIGINT handler was not restored"
    num, complete = got["partial"]
    assert not complete and num < len(clean_rows)
    if times == 1:  # a first SIGINT commits what was handed to the writer; a second drops it, so 0 rows is fine
        assert num > 0
    assert got["complete"]
    assert len(got["rows"]) == len(clean_rows)
    assert got["rows"] == clean_rows


def test_watch_turns_signals_into_requests_and_restores_handlers():
    token = StopToken()
    repeats: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with SignalWatch(token, repeats.append):
        signal.raise_signal(signal.SIGTERM)
        assert token.signum == signal.SIGTERM and not repeats
        signal.raise_signal(signal.SIGINT)
        assert repeats == [signal.SIGINT] and token.signum == signal.SIGTERM  # the first request wins
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_api_restores_threads_seed_and_handlers(tmp_path: Path, photos: Path):
    """What featdump.extract changes in the caller's process is put back (malloc settings excepted,
    as documented)."""
    code = r"""
import json, signal, sys, torch
import featdump
torch.set_num_threads(1); torch.manual_seed(1234)
state = torch.random.get_rng_state()
featdump.extract("resnet18", [sys.argv[1]], sys.argv[2], pretrained=False, workers=0)
print(json.dumps({"threads": torch.get_num_threads(), "rng": bool(torch.equal(state, torch.random.get_rng_state())),
                  "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                  "cudnn": torch.backends.cudnn.benchmark}))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(photos), str(tmp_path / "o.h5")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"threads": 1, "rng": True, "sigint": True, "cudnn": False}


def test_a_guarded_command_gives_the_handlers_back() -> None:
    """The CLI's start-up watch, handed to guarded_run, leaves the handlers as it found them (an
    in-process command left its own behind: a later Ctrl-C only asked a finished run to stop)."""
    from featdump.cli.signals import guarded_run, watch_start_up

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with guarded_run(watch_start_up()):
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in before} == before
