"""Job options, declared once: the fields of :class:`ExtractConfig` are the option table (how it is
declared and what is derived from it: featdump/optiontable.py). Adding an option is one field here
plus its behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from featdump.optiontable import FROM_MODEL, Option, opt, option_table, options_of
from featdump.values import (
    ImgSize,
    parse_img_size,
    parse_indices,
    parse_kept,
    parse_names,
    parse_number,
    parse_process,
    parse_shard,
    parse_tiles,
    parse_weights,
    path_or_none,
    stored_stride,
    stride_attr,
)

Precision = Literal["fp32", "fp16", "bf16"]
Dtype = Literal["float32", "float16"]
Pool = Literal["none", "avg", "max"]
Compression = Literal["none", "gzip", "lzf", "zstd"]
Interpolation = Literal["bilinear", "bicubic", "nearest", "box", "hamming", "lanczos"]  # timm's eval resize filters
Decode = Literal["cpu", "gpu"]  # --decode: PIL in worker processes, or torchvision's nvjpeg on the CUDA device
Tokens = Literal["seq", "map", "both"]
CropMode = Literal["center", "squash", "border"]  # timm's eval crop modes (transforms_imagenet_eval)
OutputStride = Literal[8, 16, 32]

DTYPES: tuple[str, ...] = get_args(Dtype)
POOLS: tuple[str, ...] = get_args(Pool)
TOKENS: tuple[str, ...] = get_args(Tokens)
OUTPUT_STRIDES: tuple[int, ...] = get_args(OutputStride)


def decode_attr(cfg: Any) -> str:
    """The file's ``decode`` attribute: ``exact`` (timm's transform on PIL, the default), ``fast``
    (``--fast-decode``: JPEG DCT scaling / reduce before resize) or ``gpu`` (``--decode gpu``)."""
    if cfg.decode == "gpu":
        return "gpu"
    return "fast" if cfg.fast_decode else "exact"


def _names(attrs: dict[str, Any]) -> tuple[str, ...] | None:
    """``layers`` from a file: the module names, only when it was made with ``--layers`` (no levels)."""
    if attrs.get("out_indices") or not attrs.get("layers"):
        return None
    names = [str(n) for n in attrs["layers"]]
    if attrs.get("tokens") == "both":  # the datasets: each module's map and its <name>.prefix
        names = [n for n in names if not (n.endswith(".prefix") and n.removesuffix(".prefix") in names)]
    return tuple(names)


def _steps(attrs: dict[str, Any]) -> tuple[str, ...] | None:
    """``process`` from a file: its list of steps; a scalar string (crafted: runs write a list) is one step."""
    value = attrs.get("process")
    return (value,) if isinstance(value, str) and value else tuple(value) if value else None


def _height_width(attrs: dict[str, Any]) -> ImgSize | None:
    if attrs.get("img_size_mode"):  # a size mode: input_size holds its nominal square
        return parse_img_size(str(attrs["img_size_mode"]))
    size = attrs.get("input_size") or []
    return (int(size[1]), int(size[2])) if len(size) == 3 else None


@option_table
class ExtractConfig:
    """Everything one ``extract`` run needs, validated. Every field but ``command`` is an option.

    A ``meaning`` option's ``example`` is a value other than the default that tests/test_like_table.py
    extracts, reproduces with ``--like`` and verifies.
    """

    model: str = opt("timm model name, e.g. resnet50.", flags=(), meaning=True, example="resnet10t")
    inputs: tuple[str, ...] = opt(
        "Image folders (recursive), text files listing images, image files; or WebDataset tar shards "
        "(shards/train-{000000..000099}.tar); or one table (.csv/.tsv/.parquet/.jsonl).",
        flags=(),
        cli=list[str],
        api=str | Path | Sequence[str | Path],
    )
    output: str = opt("HDF5 file to write, e.g. feats.h5.", flags=("-o", "--output"), api=str | Path)
    out_indices: tuple[int, ...] | None = opt(
        "Feature levels, e.g. 1,2,-1. \\[default: the model's]",
        default=None,
        cli=str | None,
        api=Sequence[int] | str | None,
        parse=parse_indices,
        meaning=True,
        to_attr=FROM_MODEL,  # the levels the model resolved
        from_attr=lambda attrs: tuple(int(i) for i in attrs["out_indices"]) if attrs.get("out_indices") else None,
        # in any order (the model returns them in its own); an edited scalar attribute is simply another value
        same=lambda a, b: all(isinstance(v, (list, tuple)) and v for v in (a, b)) and sorted(map(repr, a)) == sorted(map(repr, b)),
        example=(2,),
    )
    layers: tuple[str, ...] | None = opt(
        "Module names instead of levels (see inspect --all-modules).",
        default=None,
        cli=str | None,
        api=Sequence[str] | str | None,
        parse=parse_names,
        meaning=True,
        to_attr=FROM_MODEL,  # the stored layer names (levels too)
        from_attr=_names,
        example=("layer2.0",),
    )
    tokens: Tokens = opt(
        "Token outputs: seq stores (N,T,D), map stores (N,D,H,W) (prefix tokens dropped), both stores the map "
        "and the prefix (CLS, register) tokens (N,P,D) as <name>.prefix.",
        default="seq",
        meaning=True,
        example="map",
    )
    output_stride: OutputStride | None = opt(
        "8|16|32 (dilated).",
        default=None,
        meaning=True,
        to_attr=lambda cfg: stride_attr(cfg.output_stride),
        from_attr=lambda attrs: stored_stride(attrs.get("output_stride")),
        example=16,
    )
    img_size: ImgSize | None = opt(
        "224 or HEIGHTxWIDTH; or long:L, short:S, native: each image at its own aspect, sides rounded "
        "to the model's unit, no crop. \\[default: pretrained config]",
        default=None,
        cli=str | None,
        api=int | str | tuple[int, int] | None,
        parse=parse_img_size,
        meaning=True,
        attr="input_size",
        to_attr=FROM_MODEL,
        from_attr=_height_width,
        example=(96, 80),
    )
    max_side: int = opt(
        "With --img-size native: images downscaled so that their long side is at most N pixels.",
        default=2048,
        minimum=8,
        meaning=True,
        example=512,
    )
    tiles: tuple[int, int] | None = opt(
        "SIZE\\[:STRIDE]: cut each image into SIZE x SIZE tiles at STRIDE \\[SIZE] steps, one row each (the last "
        "ones end at the border; small images padded).",
        default=None, cli=str | None, api=int | str | tuple[int, int] | None, parse=parse_tiles, meaning=True, example=(64, 48),
    )  # fmt: skip
    tile_scale: float = opt(
        "With --tiles: resize each image by F first (the model's interpolation).",
        default=1.0, cli=str, api=float | str, meaning=True, example=0.5,
        parse=lambda v: parse_number(v, "--tile-scale", 16.0, "0.5 or 2"),
    )  # fmt: skip
    crop_mode: CropMode | None = opt(
        "center|squash|border: crop the centre, resize the whole image (aspect changes), or keep the "
        "aspect and pad (letterbox); a fixed --img-size only. \\[default: the model's]",
        default=None,
        meaning=True,
        to_attr=FROM_MODEL,
        example="squash",
    )
    crop_pct: float | None = opt(
        "Fraction of the resized image kept (timm's crop_pct; 1.0 keeps it all); a fixed --img-size only. \\[default: the model's]",
        default=None,
        cli=str | None,
        api=float | str | None,
        parse=lambda v: None if v is None or v == "" else parse_number(v, "--crop-pct", 1.0, "0.875 or 1.0"),
        meaning=True,
        to_attr=FROM_MODEL,
        example=0.5,
    )
    interpolation: Interpolation | None = opt(
        "Resize filter of timm's eval transform: bilinear|bicubic|nearest|box|hamming|lanczos. \\[default: the model's]",
        default=None,
        meaning=True,
        to_attr=FROM_MODEL,
        example="nearest",
    )
    pretrained: bool = opt(
        "Hub weights (cached), or random init.",
        default=True,
        flags=("--pretrained/--no-pretrained",),
        meaning=True,
        attr="weights",
        to_attr=FROM_MODEL,  # the weights tag: the pretrained tag, checkpoint:PATH sha256:HEX, or random
        from_attr=lambda attrs: parse_weights(attrs.get("weights"))["pretrained"],
        example=False,
    )
    checkpoint: str | None = opt(
        "Local weights: .safetensors/.pth/.pt/.bin (timm names).",
        default=None,
        cli=Path | None,
        api=str | Path | None,
        parse=path_or_none,
        meaning=True,
        attr="weights",
        to_attr=FROM_MODEL,
        from_attr=lambda attrs: parse_weights(attrs.get("weights"))["checkpoint"],  # sha256 checked: store/like.py
        # a checkpoint is known by its sha256 alone (the same bytes at another path, another node's mount)
        same=lambda a, b: bool(sha := parse_weights(a)["sha256"]) and sha == parse_weights(b)["sha256"],
    )
    device: str = opt("auto|cpu|cuda|cuda:N|mps.", default="auto")
    precision: Precision = opt("fp32|fp16|bf16 (autocast).", default="fp32", meaning=True, example="bf16")
    batch_size: int | None = opt(
        "Images per forward pass. \\[default: on a CPU 16 for models with over 32 MiB of weights at inputs up to 288x288, else 8; 64 on CUDA; --resume keeps the file's]",
        default=None,
    )
    workers: int | None = opt(
        "Decoding workers: threads on CPU, processes on GPUs; 0 decodes in the main thread. \\[default: tuned]",
        default=None,
        minimum=0,
    )
    dtype: Dtype = opt("Storage dtype: float32|float16.", default="float32", meaning=True, example="float16")
    pool: Pool = opt("none|avg|max over space (stores N×C).", default="none", meaning=True, example="avg")
    compression: Compression = opt(
        "none|gzip|lzf|zstd (zstd: level -3, or FEATDUMP_ZSTD_LEVEL; readers import hdf5plugin).",
        default="none",
        attr="compression",
    )
    fast_decode: bool = opt(
        "JPEG DCT scaling / reduce before resize: faster decoding, pixels change slightly.",
        default=False,
        meaning=True,
        attr="decode",
        to_attr=decode_attr,
        from_attr=lambda attrs: attrs.get("decode") == "fast",
        example=True,
    )
    decode: Decode = opt(
        "cpu|gpu (gpu: torchvision's nvjpeg on the CUDA device).",
        default="cpu",
        meaning=True,
        to_attr=decode_attr,
        from_attr=lambda attrs: "gpu" if attrs.get("decode") == "gpu" else "cpu",
        example="gpu",
    )
    compile: bool = opt("torch.compile the backbone (pays off on long GPU runs).", default=False)
    shard: tuple[int, int] | None = opt(
        "I/N: handle block I of N. \\[default: from torchrun/Slurm]",
        default=None,
        cli=str | None,
        api=str | tuple[int, int] | None,
        parse=parse_shard,
    )
    ray: str | None = opt(
        "Run as --shards tasks on a Ray cluster, then merge them into -o: local (start one), auto (find a "
        "running one) or the cluster's ADDRESS. Needs featdump\\[ray]; see docs/cluster.md.",
        default=None,
    )
    shards: int | None = opt("With --ray: how many shard tasks (files OUT.shard-0000I-of-0000N.h5).", default=None)
    ray_retries: int = opt("With --ray: retries of a failed or lost shard task (each resumes its file).", default=3, minimum=0)
    resume: bool = opt("Continue an unfinished output (same settings), or start it if there is none.", default=False)
    overwrite: bool = opt("Replace an existing output; it is swapped in only when the run succeeds.", default=False)
    strict: bool = opt("Exit 1 at the end if any image failed.", default=False)
    quiet: bool = opt("No progress bar, no table.", default=False, flags=("--quiet", "-q"))
    max_image_pixels: int | None = opt("Refuse larger images. \\[default: Pillow's 89.5 MP]", default=None, attr="max_image_pixels",
                                       from_attr=lambda attrs: attrs.get("max_image_pixels") or None)  # verify and --like read what the run read
    max_image_bytes: int = opt(
        "Read no image (file, tar member, URL body) past this many bytes. \\[default: 256 MiB]", default=256 << 20, minimum=1
    )
    # tables (featdump/data/tables.py): which column holds the image, which the id; --like carries
    # them only onto another table
    path_column: str | None = opt(
        "Table column of image paths/URLs. \\[default: first of path, image_path, filepath, file, filename, url]",
        default=None,
        meaning=True,
        family="table",
        example="where",
    )
    image_column: str | None = opt(
        "Table column of image bytes (binary, or a {bytes, path} struct as Hugging Face stores images).",
        default=None,
        meaning=True,
        family="table",
        example="jpeg",
    )
    id_column: str | None = opt(
        "Table column stored, as text, in /ids.", default=None, meaning=True, family="table", example="key"
    )
    keep: tuple[str, ...] | None = opt(
        "WebDataset members stored as text along with the features, e.g. cls,txt,json: /meta/<ext>.",
        default=None, cli=str | None, api=Sequence[str] | str | None, parse=lambda v: parse_kept(v, "--keep"),
        meaning=True, family="tar", example=("cls",),
    )  # fmt: skip
    keep_columns: tuple[str, ...] | None = opt(
        "Table columns stored as text along with the features: /meta/<name>.",
        default=None, cli=str | None, api=Sequence[str] | str | None, parse=lambda v: parse_kept(v, "--keep-columns"),
        meaning=True, family="table", example=("key",),
    )  # fmt: skip
    process: tuple[str, ...] | None = opt(
        "NAME or NAME:ARG:ARG applied to every layer before storage, in order (repeatable): l2norm, "
        "resize:HxW, resize:stride=S, pca:K:FILE; `featdump processors` lists more.",
        default=None,
        cli=list[str] | None,
        api=Sequence[str] | str | None,
        parse=parse_process,
        from_attr=_steps,
        same=lambda a, b: all(isinstance(v, (str, list, tuple)) for v in (a, b)) and _steps({"process": a}) == _steps({"process": b}),
        meaning=True,
        example=("l2norm",),
    )
    like: str | None = opt(
        "Take every meaning setting from this featdump file (flags may change only execution).",
        default=None,
        cli=Path | None,
        api=str | Path | None,
        parse=path_or_none,
    )
    space_check: bool = opt(
        "Refuse to start when the output's file system lacks room for the uncompressed rows still to "
        "write (compressed: at the codec's expected ratio, see docs/trust.md).",
        default=True,
        flags=("--space-check/--no-space-check",),
    )
    command: str = ""

OPTIONS = options_of(ExtractConfig)


def settings(table: Sequence[Option] = OPTIONS) -> tuple[str, ...]:
    """The file attributes that record the meaning options: they must match for ``--resume`` to
    continue a file and for ``merge`` to join files (store/check.py adds what the model made of them)."""
    return tuple(dict.fromkeys(o.attr for o in table if o.meaning and o.attr))


# img_size_mode (long:512, short:256, native; "" for a fixed size): a size mode's input_size is its nominal square,
# so input_size comes last: a changed mode or --max-side is named as typed, not as the square it implies
SETTINGS: tuple[str, ...] = (*(k for k in settings() if k != "input_size"), "img_size_mode", "input_size")
SAME = {o.attr: o.same for o in OPTIONS if o.attr and o.same}  # the settings compared by a rule of their own


def option_attrs(cfg: Any) -> dict[str, Any]:
    """The file attributes written straight from options (``model``, ``pool``, ``dtype``, ``decode``, ...);
    the model writes those it resolves (``crop_pct``, ``input_size``, ``weights``, ...)."""
    return {o.attr: o.to_attr(cfg) for o in options_of(cfg.__class__) if o.attr and o.to_attr is not None}
