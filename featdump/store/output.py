"""The output file's life cycle: refuse early, create, continue (``--resume``) or replace (``--overwrite``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featdump import FORMAT_VERSION, __version__
from featdump.errors import FeatdumpError, UsageError
from featdump.data.sources import Selection
from featdump.model.layers import Backbone, LayerInfo
from featdump.options import ExtractConfig, option_attrs
from featdump.run.placement import Placement
from featdump.store.journal import OutputLock, fsync_dir
from featdump.store.format import inputs_attr, utc_now, zstd_level
from featdump.store.sink import NothingCommitted, Store


def file_attrs(cfg: ExtractConfig, backbone: Backbone, placement: Placement, selection: Selection) -> dict[str, Any]:
    """The root attributes of an output file (SPEC, "The output file"); resume and merge compare them."""
    import timm
    import torch

    data = backbone.data
    return {
        "format": "featdump",
        "format_version": FORMAT_VERSION,
        "featdump_version": __version__,
        "model": cfg.model,
        "weights": backbone.weights,
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "input_size": list(data.input_size),
        "mean": list(data.mean),
        "std": list(data.std),
        "interpolation": data.interpolation,
        "crop_pct": data.crop_pct,
        "crop_mode": data.crop_mode,
        "out_indices": [layer.index for layer in backbone.layers] if not cfg.layers else [],
        "layers": [layer.name for layer in backbone.layers],
        **option_attrs(cfg),  # tokens, output_stride, precision, dtype, pool, compression, decode, ...
        "created": utc_now(),
        "command": cfg.command,
        "inputs": inputs_attr(cfg.inputs),  # the INPUTs as given, structured (viz finds the images)
        "shard": [placement.index, placement.count],
        "num_inputs": selection.size,  # images, or tar files for tar shards
        "input_kind": selection.kind,  # files | tar | table
        "has_ids": selection.has_ids,  # /ids and /failed/ids exist
        "input_digest": selection.digest,
        "list_size": selection.total,  # the whole list: merge checks that shards agree
        "list_digest": selection.total_digest,
    }


def preflight(path: Path, cfg: ExtractConfig) -> None:
    """Refuse early, before any model is built: an existing output, a missing or unwritable folder,
    a bad ``FEATDUMP_ZSTD_LEVEL``."""
    if cfg.compression == "zstd":
        zstd_level()
    if path.exists() and not (cfg.resume or cfg.overwrite):
        raise UsageError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    if path.is_dir():
        raise UsageError(f"-o {path} is a folder; name an .h5 file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        try:
            why = "is on a read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "is not writable"
        except OSError:
            why = "is not writable"
        keep = f"; {path.name} is untouched and stays resumable there" if path.exists() else ""
        raise FeatdumpError(f"cannot write the output: folder {parent} {why}{keep}; choose a writable folder for -o")


def overwrite_path(path: Path) -> Path:
    """Where ``--overwrite`` writes the new file until it replaces ``path`` (``--resume`` finds it there)."""
    return path.with_name(f"{path.name}.featdump-new")


@dataclass
class Output:
    """The file being written, and (for --overwrite) the target it replaces at the end."""

    store: Store
    target: Path
    lock: Any = None  # OutputLock on the target while a replacement for it is written

    @property
    def replacing(self) -> bool:
        return self.store.path != self.target

    def finish(self) -> None:
        """After a successful run: move the replacement into place (atomically), let go of the target."""
        if self.replacing:
            try:
                os.replace(self.store.path, self.target)
                fsync_dir(self.target)
            except OSError as exc:
                raise FeatdumpError(
                    f"cannot replace {self.target} with {self.store.path}: {exc.strerror or exc}; "
                    "rerun with --resume to try again"
                ) from None
        if self.lock is not None:
            self.lock.release(remove=True)  # a journal of the old target no longer applies to anything
            self.lock = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release(remove=self.lock.created)
            self.lock = None


def open_output(cfg: ExtractConfig, out_path: Path, attrs: dict[str, Any], layers: Sequence[LayerInfo]) -> Output:
    """Create, continue or replace the output, as ``--resume`` / ``--overwrite`` ask.

    ``--resume`` continues, in this order: an unfinished ``--overwrite`` run (``OUT.h5.featdump-new``,
    which replaces OUT.h5 when it completes), then OUT.h5 itself; with neither it starts OUT.h5, so
    one command line serves the first run and every requeue. A complete file is left as it is.
    """
    def create(path: Path) -> Store:
        return Store.create(path, attrs, layers, pool=cfg.pool, dtype=cfg.dtype, compression=cfg.compression)

    new = overwrite_path(out_path)
    if cfg.resume and new.exists():
        lock = OutputLock(out_path)
        try:
            try:
                store = Store.resume(new, attrs, layers)
            except NothingCommitted:
                store = create(new)
        except BaseException:
            lock.release(remove=lock.created)
            raise
        return Output(store, out_path, lock)
    if cfg.resume and out_path.exists():
        try:
            return Output(Store.resume(out_path, attrs, layers), out_path)
        except NothingCommitted:
            pass
    if cfg.overwrite and out_path.exists():
        lock = OutputLock(out_path)
        try:
            if new.exists() or Path(f"{new}-journal").exists():  # an earlier --overwrite that did not finish
                stale = OutputLock(new)
                new.unlink(missing_ok=True)
                stale.release(remove=True)
            store = create(new)
        except BaseException:
            lock.release(remove=lock.created)
            raise
        return Output(store, out_path, lock)
    return Output(create(out_path), out_path)
