"""Decoded batches in input order: threads on CPU (featdump/data/loading.py), DataLoader workers on GPUs.

A stream that fails while read (a :class:`~featdump.errors.FeatdumpError` from the source: a remote
store gone) ends the keys there, dropping the batch it cut so that ``--resume`` cuts the same batches
as an uninterrupted run; :class:`Loader` raises it only after every batch read before it is out, so
the job commits them and ``--resume`` continues after them.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Any, NamedTuple

from featdump.data.datasets import ImageDataset, collate
from featdump.data.discover import ImageRef
from featdump.data.loading import ThreadLoader
from featdump.data.remote import RESUME_HINT, StoreStopped
from featdump.errors import FeatdumpError
from featdump.model.layers import Backbone
from featdump.options import ExtractConfig
from featdump.queues import BoundedQueue


class Failure(NamedTuple):
    """An input that gives no row: its position in the list streamed, stored path, one-line reason, id."""

    position: int
    path: str
    reason: str
    id: str | None = None


@dataclasses.dataclass
class Rows:
    """One batch from the loader to the store: its rows (``features`` once the model ran; ``positions``
    in the list streamed), the inputs that gave none, and where the input stands after it
    (``inputs_done``, a tar stream's ``mark``), committed with the rows for ``--resume``."""

    features: Sequence[Any]
    paths: list[str]
    failed: list[Failure]
    inputs_done: int
    ids: list[str | None] = dataclasses.field(default_factory=list)
    mark: Sequence[int] | None = None
    geometry: Any = None  # (B, 6) float64 (featdump/data/geometry.py); None: NaN rows
    pixels: Any = None
    positions: list[int] = dataclasses.field(default_factory=list)
    meta: list[dict[str, str] | None] = dataclasses.field(default_factory=list)  # --keep, --keep-columns
    tiles: Any = None  # --tiles: (B, 4) int64 y0, x0, y1, x1 in original pixels (featdump/data/tiles.py)
    whole: bool = True  # False: the batch ends inside an image's tiles; the store commits nothing then

    def finished(self) -> int:
        """The inputs this batch finishes: one per row, or with --tiles one per image whose last tile it holds."""
        return len(self.failed) + (len(self.paths) if self.tiles is None else int(self.whole and bool(self.paths)))


WINDOW = 4  # a size mode reads this many batches of refs at a time and batches their images by shape


@dataclasses.dataclass
class ShapeGroups:
    """A size mode's pixels for one window of the input: ``groups`` of ``(rows, pixels)``, each a
    ``(b, 3, h, w)`` batch of one shape (b <= the batch size), ``rows`` the indices of its images
    among the window's ``count`` good ones. A batch never mixes shapes."""

    groups: list[tuple[list[int], Any]]
    count: int

    def pin_memory(self) -> ShapeGroups:
        return ShapeGroups([(rows, x.pin_memory()) for rows, x in self.groups], self.count)


def by_shape(size: int, items: Sequence[Any], stack: Callable[[list[Any]], Any] | None = None) -> ShapeGroups:
    """``collate``'s ``stack`` for a size mode: items grouped by shape (first appearance first), cut
    into batches of at most ``size``, each stacked by ``stack`` [``torch.stack``]."""
    import torch

    by: dict[tuple[int, ...], list[int]] = {}
    for k, item in enumerate(items):
        by.setdefault(tuple(item.shape), []).append(k)
    cuts = [rows[i : i + size] for rows in by.values() for i in range(0, len(rows), size)]
    return ShapeGroups([(rows, (stack or torch.stack)([items[k] for k in rows])) for rows in cuts], len(items))


class Loader:
    """:class:`Rows` in list order, decoded by DataLoader worker processes (``processes``; default on
    GPUs, pinned memory on CUDA) or threads (featdump/data/loading.py); with ``--decode gpu`` the
    workers only read JPEG bytes and :class:`DeviceDecoder` finishes each batch here. ``start``: the
    position ``todo`` starts at. A failed stream or a :class:`StoreStopped` is raised after every
    batch before it is out."""

    def __init__(
        self,
        todo: Iterable[ImageRef],
        backbone: Backbone,
        cfg: ExtractConfig,
        device: Any,
        batch_size: int,
        workers: int,
        prefetch: int,
        decode_nice: int = 0,
        length: int | None = None,
        start: int = 0,
        processes: bool | None = None,
    ) -> None:
        import functools

        import torch

        from featdump.data.datasets import DeviceDecoder, EncodedDataset
        from featdump.data.decode import fast_decode_size, load_rgb
        from featdump.data.geometry import Geometry
        from featdump.data.transform import ResizeGuard

        self.start = start
        if length is None and isinstance(todo, Sized):
            length = len(todo)
        self.inflight: dict[int, ImageRef] = {}  # position -> ref (without its bytes), until its batch is out
        # a size mode (--img-size long:L ...): windows of WINDOW batches, their images batched by shape
        group = functools.partial(by_shape, max(1, batch_size)) if backbone.data.size_mode else None
        if group:  # about as many images in flight as a fixed size's batches
            batch_size, prefetch = batch_size * WINDOW, max(1, prefetch // WINDOW)
        self.keys = keys = StreamBatches(todo, batch_size, self.inflight)
        transform = backbone.data.transform()
        self.geometry = Geometry(transform)  # each image's /geometry row, from its original size
        guard = ResizeGuard(backbone.data, self.geometry, cfg.max_image_pixels)
        self.decoder: Any = None
        # the datasets decode the refs handed to them with each key, not a list of their own
        if cfg.decode == "gpu":
            dataset: ImageDataset = EncodedDataset([], transform, cfg.max_image_pixels, guard=guard)
            self.decoder = DeviceDecoder(transform, device, group)
        else:  # --fast-decode: decode at the size the resize needs
            size = fast_decode_size(backbone.data.input_size, backbone.data.crop_pct) if cfg.fast_decode else None
            dataset = ImageDataset([], transform, cfg.max_image_pixels, functools.partial(load_rgb, shrink_to=size), guard)
        dataset.max_bytes = cfg.max_image_bytes
        if length is not None:  # no idle processes for a handful of images
            workers = min(workers, max(1, -(-length // batch_size)))
        if processes is None:
            processes = device.type != "cpu" or self.decoder is not None
        if not processes:  # threads: see featdump/data/loading.py
            self.loader: Any = ThreadLoader(dataset, keys, workers, prefetch, decode_nice, group)
            return
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=keys,  # keys carry their refs: the stream is read here, decoded in the workers
            num_workers=workers,
            collate_fn=functools.partial(collate, stack=group) if group else collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=prefetch if workers else None,
            persistent_workers=False,  # one pass over the list: workers live exactly as long as it
        )

    def __iter__(self) -> Iterator[Rows]:
        for batch in self.loader:
            batch = self.decoder(batch) if self.decoder is not None else batch
            if batch.stopped:  # the store stopped answering: the batches before it are out, this one is dropped
                raise StoreStopped(f"{batch.stopped}; {RESUME_HINT}")
            refs = {i: self.inflight.pop(i) for i in range(batch.first, batch.last + 1)}
            yield Rows(
                [],
                [refs[i].path for i in batch.positions],
                [Failure(i, refs[i].path, reason, refs[i].id) for i, reason in batch.failed],
                self.start + batch.last + 1,
                ids=[refs[i].id for i in batch.positions],
                meta=[refs[i].meta for i in batch.positions],
                mark=refs[batch.last].mark,
                geometry=self.geometry.rows(batch.sizes),
                pixels=batch.pixels,
                positions=batch.positions,
            )
        if self.keys.broken is not None:  # every batch read before the failure is out: now the error
            raise self.keys.broken


class StreamBatches:
    """The loader's keys: lists of ``batch_size`` consecutive ``(position, ref)``, each ref also noted
    in ``inflight`` (without its bytes). Refs are read by a thread of their own from the first batch
    asked for (after a DataLoader forked its workers), at most :attr:`AHEAD` batches and :attr:`AHEAD_BYTES`
    ahead; closing the keys ends it and closes the stream. A failed stream is kept in ``broken``."""

    AHEAD = 2
    AHEAD_BYTES = 64 << 20

    def __init__(self, refs: Iterable[ImageRef], batch_size: int, inflight: dict[int, ImageRef]) -> None:
        self.refs = refs
        self.batch_size = batch_size
        self.inflight = inflight
        self.broken: FeatdumpError | None = None

    def __iter__(self) -> Iterator[list[tuple[int, ImageRef]]]:
        queue: BoundedQueue[list[ImageRef]] = BoundedQueue(self.AHEAD, self.AHEAD_BYTES)
        stream = iter(self.refs)

        def produce() -> None:
            error = None
            try:
                while chunk := list(itertools.islice(stream, max(1, self.batch_size))):
                    if not queue.put(chunk, sum(len(r.data) for r in chunk if r.data is not None)):
                        break
            except BaseException as exc:  # noqa: BLE001 - raised where the chunks are taken
                error = exc
            finally:
                if hasattr(stream, "close"):
                    stream.close()  # a generator's finally (open files) runs here, in the thread that ran it
                queue.end(error)

        threading.Thread(target=produce, name="featdump-stream", daemon=True).start()
        pos = 0
        try:
            for chunk in queue:
                keys = []
                for ref in chunk:
                    self.inflight[pos] = dataclasses.replace(ref, data=None) if ref.data is not None else ref
                    keys.append((pos, ref))
                    pos += 1
                yield keys
        except FeatdumpError as exc:
            self.broken = exc
        finally:
            queue.close()


def _worker_init(_: int) -> None:
    # Ctrl-C goes to the whole process group; the main process decides when to stop.
    # Slurm and `kill -TERM -PGID` signal every process: workers ignore both and end with the
    # DataLoader (or, if the main process dies, by PyTorch's parent watchdog).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
