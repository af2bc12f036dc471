"""The end-of-run policy (featdump/run/results.py) that the CLI and the API share."""

from __future__ import annotations

import pytest

from featdump.errors import FeatdumpError
from featdump.run.results import LayerSummary, Summary, end_of_run


def _summary(images: int, failed: int, nonfinite: int = 0) -> Summary:
    layer = LayerSummary("layer4", "layer4", 4, 32, (512, 2, 2), "float32", 0, 0, nonfinite)
    failures = [("photos/a.png", "cannot identify image file")] if failed else []
    return Summary("o.h5", "resnet18", "w", "cpu", images, failed, images + failed, (0, 1), [layer], failures)


def test_a_clean_run_passes_strict_or_not() -> None:
    end_of_run(_summary(4, 0), strict=False)
    end_of_run(_summary(4, 0), strict=True)


def test_nothing_read_fails_with_the_first_error_strict_or_not() -> None:
    for strict in (False, True):
        with pytest.raises(FeatdumpError) as info:
            end_of_run(_summary(0, 2), strict)
        assert str(info.value) == (
            "no image could be read: all 2 input(s) failed; first: photos/a.png: cannot identify image file; "
            "the file o.h5 lists them under /failed"
        )
    end_of_run(_summary(0, 0), strict=True)  # an empty list is no failure


@pytest.mark.parametrize("flag", ["--strict", "strict=True"])
def test_strict_fails_on_a_failed_image_or_nan_values_naming_the_flag(flag: str) -> None:
    end_of_run(_summary(3, 1, nonfinite=5), strict=False)  # without strict: warnings only (the CLI prints them)
    with pytest.raises(FeatdumpError, match=rf"^1 image\(s\) failed \({flag}\); see /failed in o.h5$"):
        end_of_run(_summary(3, 1), True, flag)
    with pytest.raises(FeatdumpError, match=rf"^1 layer\(s\) hold NaN/inf values \({flag}\), e\.g\. layer layer4: 5 non-finite"):
        end_of_run(_summary(3, 0, nonfinite=5), True, flag)
