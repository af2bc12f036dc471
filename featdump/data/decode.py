"""Decoding one image to RGB the way a careful user would (EXIF orientation, palettes, alpha,
CMYK, 16-bit), within a pixel limit; JPEG bytes for ``--decode gpu``.

Failures are records, not exceptions, one level up: :func:`describe_error` gives their one line.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
    """Pillow's decompression-bomb check as an error, at ``max_pixels`` when given; yields the limit in
    force. Pillow's limit is a global, so it is set and restored under :func:`warnings_as`'s lock."""
    from PIL import Image

    with warnings_as("error", Image.DecompressionBombWarning):
        saved = Image.MAX_IMAGE_PIXELS
        if max_pixels is not None:
            Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow warns above this, refuses above twice this
        try:
            yield max_pixels if max_pixels is not None else saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def to_rgb(im: Any) -> Any:
    """Convert any PIL image to 8-bit RGB: palette and gray expanded, alpha composited on black,
    CMYK/YCbCr/LAB converted, 16-bit and float scaled to 0..255."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        arr = np.asarray(im)  # int32 (I), uint16 (I;16*) or float32 (F)
        if arr.dtype.kind == "f":  # 0..1 scaled to 0..255, else taken as 0..255
            hi = float(np.nanmax(arr)) if arr.size else 0.0
            gray = np.clip(np.nan_to_num(arr) * (255.0 if hi <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        else:  # 16-bit (and 32-bit integer images holding 16-bit values): full range to 0..255
            gray = np.clip(np.rint(arr.astype(np.float64) * (255.0 / 65535)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(source: str | bytes, max_pixels: int | None = None, shrink_to: int | None = None) -> Any:
    """One image as RGB, EXIF orientation applied, first frame only; raises for anything else.
    ``shrink_to`` (``--fast-decode``): JPEGs decoded at 1/2-1/8 scale (DCT), others shrunk by a whole
    factor, both sides kept >= ``shrink_to``: faster, and the pixels change slightly."""
    from PIL import Image

    with _open_image(source) as fh:
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
            shown = f"data ({len(source)} bytes)" if isinstance(source, (bytes, bytearray)) else f"file {source!r}"
            raise Image.UnidentifiedImageError(
                f"cannot identify image {shown} (not an image, or a damaged header such as zero width)"
            ) from None
        with im:
            w, h = im.size
            if w == 0 or h == 0:
                raise ValueError(f"image has zero size ({w}x{h})")
            _check_pixels(w, h, limit)
            if getattr(im, "is_animated", False):
                im.seek(0)
            if shrink_to:
                im.draft(None, (shrink_to, shrink_to))  # a no-op for anything but JPEG
            im.load()
            rgb = to_rgb(_orient(im))  # leaving `with im` closes only the file: the loaded pixels stay, no copy
    factor = min(rgb.size) // shrink_to if shrink_to else 1
    return rgb.reduce(factor) if factor >= 2 else rgb  # the largest whole factor that keeps both sides >= shrink_to


def _open_image(source: str | bytes) -> Any:
    """A binary file object over an image file (checked regular and non-empty) or image bytes."""
    import io

    if isinstance(source, (bytes, bytearray)):  # a tar member or a table cell (featdump/data/sources.py)
        if not source:
            raise OSError("empty file (0 bytes)")
        return io.BytesIO(source)
    from featdump.data.remote import open_regular

    return open_regular(source)


def _check_pixels(w: int, h: int, limit: int | None) -> None:
    if limit is not None and w * h > limit:
        raise ValueError(f"too many pixels ({w}x{h} = {w * h} > {limit}); raise --max-image-pixels if this is a real scan")


def _orient(im: Any) -> Any:
    """EXIF orientation applied. EXIF that Pillow can read around (a corrupt maker note) is fine;
    an orientation that cannot be read means nobody knows which way up the image is: a failure."""
    from PIL import ImageOps

    with warnings_as("ignore"):  # "Corrupt EXIF data" warnings: judged below instead
        try:
            orientation = im.getexif().get(0x0112)
            if orientation is not None and not (isinstance(orientation, int) and 1 <= orientation <= 8):
                raise ValueError(f"orientation tag is {orientation!r}, not 1-8")
            return im if orientation in (None, 1) else ImageOps.exif_transpose(im)  # (its copy of an upright image: GBs for a scan)
        except Exception as exc:  # noqa: BLE001 - any EXIF parse failure
            raise ValueError(f"broken EXIF, cannot tell which way up the image is ({exc})") from None


def fast_decode_size(input_size: Sequence[int], crop_pct: float) -> int:
    """The side ``--fast-decode`` may shrink to: timm's resize target before the crop
    (``floor(size / crop_pct)``), so the eval transform still only ever scales down."""
    return max(int(math.floor(int(s) / max(crop_pct, 1e-6))) for s in input_size[-2:])


@dataclass(frozen=True)
class Encoded:
    """``--decode gpu``: a JPEG file's bytes (uint8 tensor), decoded later on the device."""

    data: Any


def read_jpeg(
    source: str | bytes, max_pixels: int | None = None, guard: Callable[[int, int], None] | None = None
) -> Encoded | None:
    """An RGB or grayscale JPEG's bytes, after :func:`load_rgb`'s checks; None for anything the GPU
    decoder should not get (other formats, CMYK), which then goes through :func:`load_rgb`."""
    import torch
    from PIL import Image

    with _open_image(source) as fh:
        try:
            with pixel_limit(max_pixels) as limit, Image.open(fh) as im:
                kind, mode, (w, h) = im.format, im.mode, im.size
        except Exception:  # noqa: BLE001 - load_rgb gives the precise reason
            return None
        if kind != "JPEG" or mode not in ("RGB", "L") or w * h == 0:
            return None
        _check_pixels(w, h, limit)
        if guard is not None:
            guard(w, h)
        fh.seek(0)
        data = fh.read()
    return Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def describe_error(exc: BaseException) -> str:
    """One line: exception type and message, never a traceback."""
    msg = str(exc).replace("\n", " ").strip() or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror
    line = f"{exc.__class__.__name__}: {msg}"
    return line.encode("utf-8", "backslashreplace").decode("utf-8")  # storable: no lone surrogates
