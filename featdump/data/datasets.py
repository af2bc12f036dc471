"""The Dataset that turns image references into model inputs, the batch it collates, and the
``--decode gpu`` finisher.

Failures are records, not exceptions: an unreadable image becomes ``(index, None, reason)`` and
never shifts another image's row. The exception is :class:`~featdump.data.remote.StoreStopped`,
which ends the run: its sample carries a :class:`Stop` reason, :func:`collate` empties that batch,
and the loader raises it after every batch before it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from featdump.data.decode import Encoded, describe_error, load_rgb, read_jpeg
from featdump.data.discover import ImageRef
from featdump.data.imagefetch import fetch_bytes
from featdump.data.remote import MAX_IMAGE_BYTES, StoreStopped, check_regular, local_path, too_big

# (position in the list, tensor or None, error text or "", original (height, width) after EXIF or None)
Sample = tuple[int, Any, str, Any]


class Stop(str):
    """A reason that ends the run before this sample (:class:`~featdump.data.remote.StoreStopped`); a
    ``str``, so it travels like any reason, through a DataLoader worker's pipe too."""


def image_source(ref: ImageRef, answered: set[str] | None = None, cap: int = MAX_IMAGE_BYTES) -> str | bytes:
    """What the decoder reads: the ref's own bytes, a URL's bytes (:func:`~featdump.data.imagefetch.fetch_bytes`,
    with ``answered``), else its local path; never more than ``cap`` bytes (``--max-image-bytes``)."""
    if ref.data is not None:
        if len(ref.data) > cap:
            raise ValueError(too_big(f"the image ({len(ref.data)} bytes)", cap))
        return ref.data
    path = local_path(ref.source)
    if path is None:
        return fetch_bytes(ref.source, answered, cap)
    if os.path.exists(path):
        check_regular(os.stat(path), cap)
    return path


class ImageDataset:
    """Map-style dataset over ``refs``; item ``i`` is ``(i, tensor, "", (height, width))`` (the
    decoded image's size after EXIF orientation, for ``/geometry``) or ``(i, None, reason, None)``."""

    jpeg = False  # EncodedDataset: JPEGs are handed on undecoded

    def __init__(
        self,
        refs: Sequence[ImageRef],
        transform: Callable[[Any], Any],
        max_pixels: int | None = None,
        loader: Callable[[str | bytes, int | None], Any] = load_rgb,
        guard: Callable[[int, int], None] | None = None,
    ) -> None:
        self.refs = list(refs)
        self.transform = transform
        self.max_pixels = max_pixels
        self.loader = loader
        self.guard = guard  # (width, height) -> raises for an image the resize would blow up (ResizeGuard)
        # hosts of image URLs that answered in this run: shared by decode threads, one copy per DataLoader worker
        self.answered: set[str] = set()
        self.max_bytes = MAX_IMAGE_BYTES  # --max-image-bytes

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, key: int | tuple[int, ImageRef]) -> Sample:
        # a key is a list index, or ``(position, ref)`` for refs streamed to the loader (batching.py)
        i, ref = key if isinstance(key, tuple) else (key, self.refs[key])
        if ref.error:  # the input itself has no image here (a tar sample without one, an empty cell)
            return i, None, ref.error, None
        try:
            source = image_source(ref, self.answered, self.max_bytes)
            if self.jpeg and (encoded := read_jpeg(source, self.max_pixels, self.guard)) is not None:
                return i, encoded, "", None  # its size is known after decoding (DeviceDecoder)
            img = self.loader(source, self.max_pixels)
            if self.guard is not None:
                self.guard(*img.size)
            size = (int(img.size[1]), int(img.size[0]))
            return i, self.transform(img), "", size
        except StoreStopped as exc:  # the run's last words
            return i, None, Stop(str(exc)), None
        except Exception as exc:  # noqa: BLE001 - any decode failure becomes a record
            # a file that was not found names the path (or URL) actually tried
            tried = f" (tried {ref.source})" if isinstance(exc, FileNotFoundError) and ref.data is None else ""
            return i, None, describe_error(exc) + tried, None


class EncodedDataset(ImageDataset):
    """``--decode gpu``: item ``i`` is ``(i, Encoded, "", None)`` for JPEGs the device decodes, else what
    :class:`ImageDataset` gives (other formats are decoded here, exactly, with PIL)."""

    jpeg = True


@dataclass
class Batch:
    """What the loader yields: good images stacked, failures listed, all by list position."""

    positions: list[int]
    pixels: Any  # torch.Tensor (B, 3, H, W) or None
    failed: list[tuple[int, str]]
    first: int  # smallest list position covered by this batch
    last: int  # largest list position covered by this batch
    # --decode gpu: one entry per position, an Encoded JPEG or a decoded tensor; pixels is None
    encoded: list[Any] = field(default_factory=list)
    # one per position: the original (height, width) after EXIF orientation (None: not known)
    sizes: list[Any] = field(default_factory=list)
    # why the run stops before this batch (a Stop: the store stopped answering; the batch is empty); "" to go on
    stopped: str = ""

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread (CUDA): page-locked pixels copy asynchronously."""
        pixels = self.pixels.pin_memory() if self.pixels is not None else None
        encoded = [Encoded(e.data.pin_memory()) if isinstance(e, Encoded) else e.pin_memory() for e in self.encoded]
        return replace(self, pixels=pixels, encoded=encoded)


def collate(samples: list[Sample], stack: Callable[[list[Any]], Any] | None = None) -> Batch:
    """Samples -> a Batch; ``stack`` joins the good items' pixels (default ``torch.stack``).

    A :class:`Stop` empties the batch (``last`` is ``first - 1``) and sets ``stopped``, so the run ends
    on a batch boundary: ``--resume`` then cuts an uninterrupted run's batches, and CPU kernels give
    bit-identical values only for the same batch size."""
    import torch

    covered = [s[0] for s in samples]
    stop = next((s[2] for s in samples if isinstance(s[2], Stop)), None)
    if stop is not None:
        return Batch([], None, [], min(covered), min(covered) - 1, stopped=str(stop))
    good = [(s[0], s[1]) for s in samples if s[1] is not None]
    failed = [(s[0], s[2]) for s in samples if s[1] is None]
    sizes = [s[3] for s in samples if s[1] is not None]
    positions = [i for i, _ in good]
    if any(isinstance(t, Encoded) for _, t in good):
        return Batch(positions, None, failed, min(covered), max(covered), [t for _, t in good], sizes=sizes)
    pixels = (stack or torch.stack)([t for _, t in good]) if good else None
    return Batch(positions, pixels, failed, min(covered), max(covered), sizes=sizes)


class DeviceDecoder:
    """``--decode gpu``: a Batch of JPEG bytes -> pixels on ``device``, decoded by torchvision
    (nvjpeg on CUDA) and transformed there. A file the decoder rejects becomes a failure record;
    images that were not JPEGs arrive decoded already and are only moved."""

    def __init__(self, transform: Any, device: Any, stack: Callable[[list[Any]], Any] | None = None) -> None:
        self.device = device
        self.stack = stack  # a size mode's by_shape (featdump/data/batching.py); else torch.stack
        from featdump.data.transform import SplitTransform

        self.apply = SplitTransform(transform).on_tensor

    def _decode(self, data: Any) -> Any:
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)

    def __call__(self, batch: Batch) -> Batch:
        import torch

        if not batch.encoded:
            return batch
        jpegs = [(k, e.data) for k, e in enumerate(batch.encoded) if isinstance(e, Encoded)]
        decoded: dict[int, Any] = {}
        failed = list(batch.failed)
        if jpegs:
            try:
                decoded = dict(zip((k for k, _ in jpegs), self._decode([d for _, d in jpegs]), strict=True))
            except Exception:  # noqa: BLE001 - one bad file fails the batched call: find which
                for k, data in jpegs:
                    try:
                        decoded[k] = self._decode(data)
                    except Exception as exc:  # noqa: BLE001 - becomes a record
                        why = re.sub(r"^[^,]*, \S+\.(?:cpp|cu|h):\d+, ", "", describe_error(exc))
                        failed.append((batch.positions[k], f"{why} (decode_jpeg on {self.device})"))
        rows, positions, sizes = [], [], []
        for k, (pos, item) in enumerate(zip(batch.positions, batch.encoded, strict=True)):
            if isinstance(item, Encoded):
                if k not in decoded:
                    continue
                sizes.append((int(decoded[k].shape[-2]), int(decoded[k].shape[-1])))  # EXIF applied
                rows.append(self.apply(decoded[k]))
            else:
                sizes.append(batch.sizes[k])
                rows.append(item.to(self.device, non_blocking=True))
            positions.append(pos)
        pixels = (self.stack or torch.stack)(rows) if rows else None
        return Batch(positions, pixels, sorted(failed), batch.first, batch.last, sizes=sizes, stopped=batch.stopped)
