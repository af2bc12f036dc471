"""Environment settings (featdump/environment.py), parametrised over the table itself: an entry
added later is checked by these tests with no new test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from featdump.environment import ENVIRONMENT, Setting, check_environment
from featdump.errors import UsageError

from conftest import ROOT

BAD = "not-a-value"  # no setting takes it


@pytest.mark.parametrize("setting", ENVIRONMENT, ids=lambda s: s.name)
def test_a_bad_value_is_one_line_exit_2_before_anything(setting: Setting, cli, photos: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(setting.name, BAD)
    with pytest.raises(UsageError, match=re.escape(f"{setting.name}='{BAD}': {setting.give}")):
        check_environment()
    res = cli("extract", "resnet18", str(photos), "-o", str(tmp_path / "x.h5"), "--no-pretrained")
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [f"featdump: error: {setting.name}='{BAD}': {setting.give}"], res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("setting", ENVIRONMENT, ids=lambda s: s.name)
def test_unset_or_empty_is_the_default(setting: Setting) -> None:
    assert setting.value({}) == setting.default == setting.value({setting.name: "  "})


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("FEATDUMP_COMMIT_SECONDS", "0", 0.0),
        ("FEATDUMP_COMMIT_SECONDS", "-1", None),
        ("FEATDUMP_COMMIT_SECONDS", "inf", None),
        ("FEATDUMP_ZSTD_LEVEL", "-50", -50),
        ("FEATDUMP_ZSTD_LEVEL", "0", None),
        ("FEATDUMP_ZSTD_LEVEL", "23", None),
        ("FEATDUMP_ZSTD_LEVEL", "1.5", None),
        ("FEATDUMP_MALLOC_TUNING", "0", False),
        ("FEATDUMP_MALLOC_TUNING", "2", None),
        ("FEATDUMP_LOG_SECONDS", "0.5", 0.5),
        ("FEATDUMP_LOG_SECONDS", "0", None),
        ("FEATDUMP_LOG_SECONDS", "nan", None),
        ("FEATDUMP_WRITE_THREADS", "3", 3),
        ("FEATDUMP_WRITE_THREADS", "65", None),
        ("HDF5_USE_FILE_LOCKING", "false", False),
        ("HDF5_USE_FILE_LOCKING", "BEST_EFFORT", True),
    ],
)
def test_values_and_bounds(name: str, text: str, value: object) -> None:
    setting = next(s for s in ENVIRONMENT if s.name == name)
    if value is None:
        with pytest.raises(UsageError, match=name):
            setting.value({name: text})
    else:
        assert setting.value({name: text}) == value


def test_the_docs_list_the_table() -> None:
    page = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    section = page.split("## Environment settings\n", 1)[1].split("\n#", 1)[0]
    listed = [line for line in section.splitlines() if line.startswith("- `")]
    assert listed == [f"- `{s.name}`: {s.help}" for s in ENVIRONMENT]
