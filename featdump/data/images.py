"""Finding images, decoding them to RGB, and the Dataset that turns them into model inputs.

Failures are records, not exceptions: an unreadable image becomes ``(index, None, reason)`` and
never shifts another image's row.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from featdump.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv", ".tsv")


@dataclass(frozen=True)
class ImageRef:
    """One input image: ``path`` is what gets stored, ``source`` is where to read it."""

    path: str
    source: str


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(root: Path) -> Iterable[tuple[str, str]]:
    """Yield ``(relative posix path, absolute path)`` of image-named entries below ``root``.

    Hidden files and folders are skipped; symlinked folders are followed once (a loop is cut at
    the first folder seen twice). Non-regular files with an image name are yielded too, so that
    they are recorded as failures instead of vanishing.
    """
    seen: set[tuple[int, int]] = set()
    stack = [(root, PurePath())]
    while stack:
        folder, rel = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            if rel == PurePath():
                raise
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                stack.append((Path(entry.path), rel / entry.name))
                if is_image_name(entry.name):
                    yield (rel / entry.name).as_posix(), entry.path
            elif is_image_name(entry.name):
                yield (rel / entry.name).as_posix(), entry.path


def read_list_file(path: Path) -> list[ImageRef]:
    """Image paths, one per line; blank lines and ``#`` comments skipped.

    Relative paths are read relative to the list file's folder and stored as written.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is neither an image (by extension) nor a UTF-8 text list of image paths") from None
    except OSError as exc:
        raise UsageError(f"cannot read list file {path}: {exc.strerror or exc}") from None
    refs = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        source = entry if os.path.isabs(entry) else str(path.parent / entry)
        refs.append(ImageRef(entry, source))
    return refs


def discover(inputs: Sequence[str]) -> list[ImageRef]:
    """All images named by ``inputs`` (folders, list files, image files), sorted by stored path."""
    refs: list[ImageRef] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = [ImageRef(rel, src) for rel, src in _walk(p)]
            if not found:
                exts = " ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
                raise UsageError(f"no images in folder {raw} (looked recursively for: {exts})")
            refs.extend(found)
        elif p.exists() or p.is_symlink():
            if is_image_name(p.name):
                refs.append(ImageRef(raw, raw))
            elif p.is_file():
                listed = read_list_file(p)
                if not listed:
                    raise UsageError(f"list file {raw} names no images (one path per line expected)")
                refs.extend(listed)
            else:
                raise UsageError(f"{raw} is not a folder, an image or a list file")
        else:
            raise UsageError(f"input not found: {raw}")
    refs.sort(key=lambda r: r.path)
    dupes = sorted({a.path for a, b in zip(refs, refs[1:]) if a.path == b.path})
    if dupes:
        raise UsageError(
            f"{len(dupes)} image path(s) would be stored twice (e.g. {dupes[0]!r}); "
            "give the common parent folder instead of several folders with the same layout"
        )
    return refs


def list_digest(refs: Sequence[ImageRef]) -> str:
    """sha256 of the stored paths in order: two runs over the same input list agree on it."""
    h = hashlib.sha256()
    for r in refs:
        h.update(r.path.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- decoding


_WARNINGS = threading.Lock()


@contextlib.contextmanager
def warnings_as(action: str, category: type[Warning] = Warning) -> Iterator[None]:
    """``warnings.catch_warnings`` + one filter, held under a lock: the filters are global, so two
    decoding threads entering and leaving their own ``catch_warnings`` could leave another one's
    filter in place (or drop it mid-open). Only header parsing and EXIF run inside it."""
    with _WARNINGS, warnings.catch_warnings():
        warnings.simplefilter(action, category)  # type: ignore[arg-type]
        yield


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[int | None]:
    """Pillow's decompression-bomb check at ``Image.open`` as an error, at ``max_pixels`` when
    given; yields the limit in force. The limit is a global of Pillow's, so it is set and put back
    under the same lock (decoding threads may use different limits; nothing outside this block
    sees ours, and Pillow's own is read only while no thread has changed it)."""
    from PIL import Image

    with warnings_as("error", Image.DecompressionBombWarning):
        saved = Image.MAX_IMAGE_PIXELS
        if max_pixels is not None:
            Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow warns above this, refuses above twice this
        try:
            yield max_pixels if max_pixels is not None else saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_uint8(arr: Any) -> Any:
    import numpy as np

    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        hi = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    # 16-bit (and 32-bit integer images holding 16-bit values): full range to 0..255
    hi = 65535 if arr.max(initial=0) > 255 or arr.dtype.itemsize >= 2 else 255
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / hi)), 0, 255).astype(np.uint8)


def to_rgb(im: Any) -> Any:
    """Convert any PIL image to 8-bit RGB: palette and gray expanded, alpha composited on black,
    CMYK/YCbCr/LAB converted, 16-bit and float scaled to 0..255."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        gray = _to_uint8(np.asarray(im))
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(source: str, max_pixels: int | None = None, shrink_to: int | None = None) -> Any:
    """Open one image as RGB, with EXIF orientation applied and only the first frame of animations.

    ``shrink_to`` (``--fast-decode``): decode JPEGs at 1/2, 1/4 or 1/8 scale (DCT scaling) and
    shrink other images by a whole factor, keeping both sides >= ``shrink_to``; the resize that
    follows then starts from fewer pixels. Faster, and the pixels change slightly.

    Raises on anything that is not a readable, non-empty regular image file.
    """
    from PIL import Image

    _check_regular(os.stat(source))  # never open a FIFO or device: that could block or have effects
    limit = max_pixels
    # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open returns instead of waiting
    with open(source, "rb", opener=_open_nonblocking) as fh:
        _check_regular(os.fstat(fh.fileno()))
        try:
            with pixel_limit(max_pixels) as limit:
                im = Image.open(fh)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow quotes its own (doubled) limit: use ours
            size = f"{found.group(1)} pixels" if found else "the image"
            raise ValueError(
                f"too many pixels ({size} > {limit}); raise --max-image-pixels if this is a real scan"
            ) from None
        except Image.UnidentifiedImageError:  # name the file, not the file object
            raise Image.UnidentifiedImageError(
                f"cannot identify image file {source!r} (not an image, or a damaged header such as zero width)"
            ) from None
        with im:
            w, h = im.size
            if w == 0 or h == 0:
                raise ValueError(f"image has zero size ({w}x{h})")
            if limit is not None and w * h > limit:
                raise ValueError(
                    f"too many pixels ({w}x{h} = {w * h} > {limit}); raise --max-image-pixels if this is a real scan"
                )
            if getattr(im, "is_animated", False):
                im.seek(0)
            if shrink_to:
                im.draft(None, (shrink_to, shrink_to))  # a no-op for anything but JPEG
            im.load()
            oriented = _orient(im)
            rgb = to_rgb(oriented if oriented is not None else im)
            if rgb is im:
                rgb = im.copy()
    if shrink_to:
        rgb = shrink(rgb, shrink_to)
    return rgb


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def _check_regular(st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError("is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise OSError("not a regular file (FIFO, socket or device)")
    if st.st_size == 0:
        raise OSError("empty file (0 bytes)")


def _orient(im: Any) -> Any:
    """EXIF orientation applied. EXIF that Pillow can read around (a corrupt maker note) is fine;
    an orientation that cannot be read means nobody knows which way up the image is: a failure."""
    from PIL import ImageOps

    with warnings_as("ignore"):  # "Corrupt EXIF data" warnings: judged below instead
        try:
            orientation = im.getexif().get(0x0112)
            if orientation is not None and not (isinstance(orientation, int) and 1 <= orientation <= 8):
                raise ValueError(f"orientation tag is {orientation!r}, not 1-8")
            return ImageOps.exif_transpose(im)
        except Exception as exc:  # noqa: BLE001 - any EXIF parse failure
            raise ValueError(f"broken EXIF, cannot tell which way up the image is ({exc})") from None


def shrink(img: Any, size: int) -> Any:
    """Box-reduce ``img`` by the largest whole factor that keeps both sides >= ``size``."""
    factor = min(img.size) // max(1, size)
    return img.reduce(factor) if factor >= 2 else img


def fast_decode_size(input_size: Sequence[int], crop_pct: float) -> int:
    """The side ``--fast-decode`` may shrink to: timm's resize target before the crop
    (``floor(size / crop_pct)``), so the eval transform still only ever scales down."""
    return max(int(math.floor(int(s) / max(crop_pct, 1e-6))) for s in input_size[-2:])


@dataclass(frozen=True)
class Encoded:
    """``--decode gpu``: a JPEG file's bytes (uint8 tensor), decoded later on the device."""

    data: Any


def read_jpeg(source: str, max_pixels: int | None = None) -> Encoded | None:
    """The bytes of a baseline/progressive RGB or grayscale JPEG, after the same checks as
    :func:`load_rgb` (regular file, size, pixel limit); None for anything the GPU decoder
    should not get (other formats, CMYK JPEGs), which then go through :func:`load_rgb`."""
    import torch
    from PIL import Image

    _check_regular(os.stat(source))
    limit = max_pixels
    with open(source, "rb", opener=_open_nonblocking) as fh:
        _check_regular(os.fstat(fh.fileno()))
        try:
            with pixel_limit(max_pixels) as limit, Image.open(fh) as im:
                kind, mode, (w, h) = im.format, im.mode, im.size
        except Exception:  # noqa: BLE001 - load_rgb gives the precise reason
            return None
        if kind != "JPEG" or mode not in ("RGB", "L") or w * h == 0:
            return None
        if limit is not None and w * h > limit:
            raise ValueError(
                f"too many pixels ({w}x{h} = {w * h} > {limit}); raise --max-image-pixels if this is a real scan"
            )
        fh.seek(0)
        data = fh.read()
    return Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def describe_error(exc: BaseException) -> str:
    """One line: exception type and message, never a traceback."""
    msg = str(exc).replace("\n", " ").strip() or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror
    return f"{exc.__class__.__name__}: {msg}"


# --------------------------------------------------------------------------- dataset

Sample = tuple[int, Any, str]  # (position in the list, tensor or None, error text or "")


class ImageDataset:
    """Map-style dataset over ``refs``; item ``i`` is ``(i, tensor, "")`` or ``(i, None, reason)``."""

    def __init__(
        self,
        refs: Sequence[ImageRef],
        transform: Callable[[Any], Any],
        max_pixels: int | None = None,
        loader: Callable[[str, int | None], Any] = load_rgb,
    ) -> None:
        self.refs = list(refs)
        self.transform = transform
        self.max_pixels = max_pixels
        self.loader = loader

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> Sample:
        ref = self.refs[i]
        try:
            img = self.loader(ref.source, self.max_pixels)
            return i, self.transform(img), ""
        except Exception as exc:  # noqa: BLE001 - any decode failure becomes a record
            return i, None, describe_error(exc)


class EncodedDataset(ImageDataset):
    """``--decode gpu``: item ``i`` is ``(i, Encoded, "")`` for JPEGs the device decodes, else what
    :class:`ImageDataset` gives (other formats are decoded here, exactly, with PIL)."""

    def __getitem__(self, i: int) -> Sample:
        try:
            encoded = read_jpeg(self.refs[i].source, self.max_pixels)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a record
            return i, None, describe_error(exc)
        return (i, encoded, "") if encoded is not None else super().__getitem__(i)


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

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``, CUDA runs): page-locked
        pixels let the copy to the GPU run asynchronously (``non_blocking``)."""
        pixels = self.pixels.pin_memory() if self.pixels is not None else None
        encoded = [Encoded(e.data.pin_memory()) if isinstance(e, Encoded) else e.pin_memory() for e in self.encoded]
        return Batch(self.positions, pixels, self.failed, self.first, self.last, encoded)


def collate(samples: list[Sample], stack: Callable[[list[Any]], Any] | None = None) -> Batch:
    """Samples -> a Batch; ``stack`` joins the good items' pixels (default ``torch.stack``)."""
    import torch

    good = [(i, t) for i, t, err in samples if t is not None]
    failed = [(i, err) for i, t, err in samples if t is None]
    positions = [i for i, _ in good]
    covered = [s[0] for s in samples]
    if any(isinstance(t, Encoded) for _, t in good):
        return Batch(positions, None, failed, min(covered), max(covered), [t for _, t in good])
    pixels = (stack or torch.stack)([t for _, t in good]) if good else None
    return Batch(positions, pixels, failed, min(covered), max(covered))


def tensor_transform(transform: Any) -> Callable[[Any], Any]:
    """timm's eval transform for a decoded uint8 (3, H, W) tensor: the same resize (antialiased,
    rounded back to uint8 like PIL), crop and normalisation, with to-tensor as a /255."""
    steps = getattr(transform, "transforms", [transform])

    def apply(x: Any) -> Any:
        for step in steps:
            if type(step).__name__ in ("ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor"):
                x = x.float().div_(255.0)
            else:
                x = step(x)
        return x

    return apply


class DeviceDecoder:
    """``--decode gpu``: a Batch of JPEG bytes -> pixels on ``device``, decoded by torchvision
    (nvjpeg on CUDA) and transformed there. A file the decoder rejects becomes a failure record;
    images that were not JPEGs arrive decoded already and are only moved."""

    def __init__(self, transform: Any, device: Any) -> None:
        self.device = device
        self.apply = tensor_transform(transform)

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
                decoded = dict(zip((k for k, _ in jpegs), self._decode([d for _, d in jpegs])))
            except Exception:  # noqa: BLE001 - one bad file fails the batched call: find which
                for k, data in jpegs:
                    try:
                        decoded[k] = self._decode(data)
                    except Exception as exc:  # noqa: BLE001 - becomes a record
                        why = re.sub(r"^[^,]*, \S+\.(?:cpp|cu|h):\d+, ", "", describe_error(exc))
                        failed.append((batch.positions[k], f"{why} (decode_jpeg on {self.device})"))
        rows, positions = [], []
        for k, (pos, item) in enumerate(zip(batch.positions, batch.encoded)):
            if isinstance(item, Encoded):
                if k not in decoded:
                    continue
                rows.append(self.apply(decoded[k]))
            else:
                rows.append(item.to(self.device, non_blocking=True))
            positions.append(pos)
        pixels = torch.stack(rows) if rows else None
        return Batch(positions, pixels, sorted(failed), batch.first, batch.last)
