"""--img-size long:L | short:S | native: each image at its own aspect, numbers equal to timm's."""

from __future__ import annotations

from featdump.model.layers import LayerInfo, is_ragged, mark_ragged


def test_ragged_marks_spatial_maps_only() -> None:
    layers = [
        LayerInfo("layer4", "layer4", 4, 512, 32, (512, 2, 2)),
        LayerInfo("blocks.1", "blocks.1", -1, 192, 16, (192, 4, 4), "NLC", {"tokens": "map"}),
        LayerInfo("blocks.1.prefix", "blocks.1", -1, 192, 0, (1, 192), "NLC", {"part": "prefix"}),
        LayerInfo("head", "head", -1, 10, 0, (10,), "NLC"),
    ]
    marked = mark_ragged(layers)
    assert [is_ragged(x, "none") for x in marked] == [True, True, False, False]
    assert not any(is_ragged(x, "avg") for x in marked)  # a pooled layer stays (N, C)
    assert not any(is_ragged(x, "none") for x in layers)  # fixed runs: nothing ragged
    assert marked[0].shape == layers[0].shape
