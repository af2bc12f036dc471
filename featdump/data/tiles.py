"""``--tiles SIZE[:STRIDE]``: each image cut into SIZE x SIZE tiles, one row each.

Tiles are cut (docs/options.md) when their batch is made, and a batch holds one image's tiles: memory
is one decoded image plus one batch, and since the store commits only at image boundaries
(:attr:`Rows.whole`), ``--resume`` cuts the same batches as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from featdump.data.batching import Failure, Rows
from featdump.data.datasets import ImageDataset, Stop
from featdump.data.discover import ImageRef
from featdump.data.loading import ThreadLoader
from featdump.data.remote import RESUME_HINT, StoreStopped
from featdump.data.transform import DEFAULT_RESIZED_PIXELS, SplitTransform
from featdump.model.layers import Backbone, DataConfig
from featdump.options import ExtractConfig


def starts(length: int, size: int, stride: int) -> list[int]:
    """Where the tiles along one side begin: every ``stride`` pixels, the last one moved to end at
    ``length`` (``length >= size``)."""
    out = list(range(0, length - size + 1, stride))
    return out if out[-1] + size >= length else [*out, length - size]


class Tiler:
    """Scales, pads and cuts one image; maps each tile back to the original image."""

    def __init__(self, data: Any, size: int, stride: int, scale: float, max_pixels: int | None = None) -> None:
        from timm.data.transforms import str_to_pil_interp

        self.size, self.stride, self.scale = size, stride, scale
        self.resample = str_to_pil_interp(data.interpolation)
        self.fill = tuple(round(255 * v) for v in data.mean)  # timm's border mode pads with the mean colour
        self.max_pixels = max_pixels or DEFAULT_RESIZED_PIXELS

    def prepare(self, img: Any) -> tuple[Any, int, int, int, int]:
        """``(picture, scaled_h, scaled_w, pad_top, pad_left)``: the image resized by the scale and
        padded to at least SIZE a side."""
        from timm.data.transforms import center_crop_or_pad

        if self.scale != 1.0:
            w, h = max(1, round(img.width * self.scale)), max(1, round(img.height * self.scale))
            if w * h > self.max_pixels:
                raise ValueError(f"--tile-scale {self.scale} makes {w}x{h} = {w * h} pixels (> {self.max_pixels}); "
                                 "raise --max-image-pixels if this is a real image")  # fmt: skip
            img = img.resize((w, h), self.resample)
        h, w, s = img.height, img.width, self.size
        pad_top, pad_left = max(0, (s - h) // 2), max(0, (s - w) // 2)
        if h < s or w < s:
            img = center_crop_or_pad(img, [max(h, s), max(w, s)], fill=self.fill)
        return img, h, w, pad_top, pad_left

    def windows(self, picture: Any) -> tuple[list[int], list[int]]:
        """The tiles' tops and lefts in the prepared picture: tile ``k`` (row-major) is at :func:`corner`
        (not listed: an image at STRIDE 1 has millions)."""
        return starts(picture.height, self.size, self.stride), starts(picture.width, self.size, self.stride)

    def tile(self, picture: Any, at: tuple[int, int]) -> Any:
        """The SIZE x SIZE tile at ``at`` ``(y, x)`` of the prepared picture."""
        y, x = at
        return picture.crop((x, y, x + self.size, y + self.size))

    def rows(self, prepared: tuple[Any, ...], orig: tuple[int, int], corners: Sequence[tuple[int, int]]) -> tuple[Any, Any]:
        """``(/geometry rows, /tiles rows)`` of these tiles: the affine map of each tile's input to
        the original image (scale ``orig / scaled``, offset the tile's corner there; negative over
        padding) and its box ``y0, x0, y1, x1`` in original pixels (clipped to the image, outward to
        whole pixels)."""
        import numpy as np

        _, sh, sw, pad_top, pad_left = prepared
        oh, ow = orig
        yx = np.array(corners, dtype=np.float64).reshape(-1, 2) - (pad_top, pad_left)
        scale = np.array([oh / sh, ow / sw])
        geometry = np.empty((len(yx), 6))
        geometry[:, :2], geometry[:, 2:4], geometry[:, 4:] = (oh, ow), scale, yx * scale
        lo = np.floor(np.clip(yx, 0, None) * scale)
        hi = np.minimum(np.ceil(np.minimum(yx + self.size, (sh, sw)) * scale), (oh, ow))
        return geometry, np.concatenate([lo, hi], axis=1).astype(np.int64)


def corner(grid: tuple[list[int], list[int]], k: int) -> tuple[int, int]:
    """Tile ``k``'s top-left corner ``(y, x)`` on a :meth:`Tiler.windows` grid."""
    i, j = divmod(k, len(grid[1]))
    return grid[0][i], grid[1][j]


def tile_view(attrs: dict[str, Any], img: Any, index: int) -> Any:
    """Tile ``index`` of ``img`` as the model saw it (before normalisation), by a file's attributes
    (``viz``; ``verify`` cuts tiles through :class:`TileLoader`)."""
    size, stride = (int(v) for v in attrs["tiles"])
    tiler = Tiler(DataConfig.from_timm(attrs), size, stride, float(attrs["tile_scale"]), attrs.get("max_image_pixels") or None)
    picture = tiler.prepare(img)[0]
    return tiler.tile(picture, corner(tiler.windows(picture), index))


def image_starts(ff: Any) -> list[int]:
    """The rows of the open ``--tiles`` file ``ff`` that begin an image: where the path changes or the
    tile's corner (its ``/geometry`` offset) does not move on in row-major order (an image listed twice
    in a row)."""
    paths, corners = ff.paths, ff.geometry()[:, 4:].tolist()
    return [r for r in range(len(paths)) if not r or paths[r] != paths[r - 1] or corners[r] <= corners[r - 1]]


def first_rows(rows: Sequence[int], starts: Sequence[int]) -> list[int]:
    """The first row of each of ``rows``' images in a ``--tiles`` file whose images start at ``starts``
    (:func:`image_starts`); a row's tile index: ``row - first``."""
    import bisect

    return [starts[bisect.bisect_right(starts, r) - 1] for r in rows]


class TileLoader:
    """:class:`Rows` of tiles in input order (``--tiles``; :class:`~featdump.data.batching.Loader`'s
    arguments): images decoded ``workers`` ahead in threads, tiles sent ``batch_size`` at a time.
    ``only``: one tile index per input (``verify``). A failed stream drops the images decoded ahead."""

    def __init__(self, todo: Iterable[ImageRef], backbone: Backbone, cfg: ExtractConfig, device: Any, batch_size: int,
                 workers: int, prefetch: int = 2, decode_nice: int = 0, length: int | None = None, start: int = 0,
                 only: Sequence[int] | None = None) -> None:  # fmt: skip
        assert cfg.tiles is not None  # loader() picks this class for --tiles runs only
        self.todo, self.start, self.batch_size, self.workers, self.only = todo, start, batch_size, workers, only
        self.nice = decode_nice
        self.tiler = Tiler(backbone.data, *cfg.tiles, cfg.tile_scale, cfg.max_image_pixels)
        self.split = SplitTransform(backbone.data.transform())
        self.dataset = ImageDataset([], self.tiler.prepare, cfg.max_image_pixels)
        self.dataset.max_bytes = cfg.max_image_bytes

    def __iter__(self) -> Iterator[Rows]:
        import numpy as np

        refs: dict[int, ImageRef] = {}  # position -> ref, while its image is decoded
        keys = ([(pos, refs.setdefault(pos, ref))] for pos, ref in enumerate(self.todo))  # one image a batch
        for [(pos, prepared, reason, orig)] in ThreadLoader(self.dataset, keys, self.workers, self.workers, self.nice).samples():
            ref = refs.pop(pos)
            done = self.start + pos + 1
            if prepared is None:
                if isinstance(reason, Stop):
                    raise StoreStopped(f"{reason}; {RESUME_HINT}")
                yield Rows([], [], [Failure(pos, ref.path, reason, ref.id)], done, mark=ref.mark)
                continue
            grid = self.tiler.windows(prepared[0])
            ks = range(len(grid[0]) * len(grid[1])) if self.only is None else [self.only[pos]]
            for k in range(0, len(ks), self.batch_size):
                part, last = [corner(grid, i) for i in ks[k : k + self.batch_size]], k + self.batch_size >= len(ks)
                geometry, boxes = self.tiler.rows(prepared, orig, part)
                n = len(part)
                yield Rows(
                    [], [ref.path] * n, [], done if last else done - 1, ids=[ref.id] * n, meta=[ref.meta] * n,
                    mark=ref.mark if last else None, geometry=geometry, tiles=boxes,
                    pixels=self.split.finish([np.asarray(self.tiler.tile(prepared[0], c)) for c in part]), positions=[pos] * n, whole=last,
                )  # fmt: skip


def loader(todo: Iterable[ImageRef], backbone: Backbone, cfg: ExtractConfig, *args: Any, **kwargs: Any) -> Iterable[Rows]:
    """The job's loader stage: :class:`TileLoader` for ``--tiles`` runs, else the image :class:`Loader`."""
    from featdump.data.batching import Loader

    return (TileLoader if cfg.tiles else Loader)(todo, backbone, cfg, *args, **kwargs)
