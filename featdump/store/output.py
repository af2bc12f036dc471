"""The output file's life cycle: refuse early, create, continue (``--resume``) or replace (``--overwrite``)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featdump import FORMAT_VERSION, __version__
from featdump.data.sources import Selection
from featdump.environment import check_environment
from featdump.errors import FeatdumpError, UsageError, os_error
from featdump.model.layers import Backbone, LayerInfo
from featdump.options import ExtractConfig, option_attrs
from featdump.store.committed import open_committed
from featdump.store.format import inputs_attr, utc_now
from featdump.store.like import read_attrs
from featdump.store.locks import (
    OutputLock,
    busy,
    file_kind,
    fsync_dir,
    journal_names,
    journal_path,
    not_a_journal,
    writer_active,
)
from featdump.store.sink import NothingCommitted, Store
from featdump.text import to_str
from featdump.values import size_mode_text


def file_attrs(cfg: ExtractConfig, backbone: Backbone, shard: tuple[int, int], selection: Selection) -> dict[str, Any]:
    """The root attributes of an output file (docs/file-format.md); resume and merge compare them."""
    import timm
    import torch

    data = backbone.data
    return {
        "format": "featdump",
        "format_version": FORMAT_VERSION,
        "featdump_version": __version__,
        "weights": backbone.weights,
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "input_size": list(data.input_size),
        "img_size_mode": size_mode_text(cfg.img_size),
        "mean": list(data.mean),
        "std": list(data.std),
        "interpolation": data.interpolation,
        "crop_pct": data.crop_pct,
        "crop_mode": data.crop_mode,
        "out_indices": [layer.index for layer in backbone.layers] if not cfg.layers else [],
        "layers": [layer.name for layer in backbone.layers],
        **option_attrs(cfg),  # model, tokens, output_stride, precision, dtype, pool, compression, decode, ...
        "created": utc_now(),
        "command": cfg.command,
        "inputs": inputs_attr(cfg.inputs),  # the INPUTs as given, structured (viz finds the images)
        "shard": list(shard),
        "num_inputs": selection.size,  # images, or tar files for tar shards
        "input_kind": selection.kind,  # files | tar | table
        "has_ids": selection.has_ids,  # /ids and /failed/ids exist
        "input_digest": selection.digest,
        "list_size": selection.total,  # the whole list: merge checks that shards agree
        "list_digest": selection.total_digest,
    }


def preflight(path: Path, cfg: ExtractConfig) -> None:
    """Refuse what cannot be written, before any model is built; a missing folder is created."""
    check_environment()
    target, st = output_target(path)
    if st is not None and not (cfg.resume or cfg.overwrite):
        raise UsageError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    _check_leftover(journal_path(path), path)
    new = overwrite_path(target)
    new_st = _lstat(new)
    if new_st is not None:
        if not stat.S_ISREG(new_st.st_mode):
            raise UsageError(
                f"{new} is {file_kind(new_st.st_mode)}; featdump writes the replacement of {path} there: "
                "move it out of the way"
            )
        _check_leftover(journal_path(new), new)
    if st is not None and writer_active(path):
        raise busy(path, journal_path(path))
    if st is not None and cfg.resume and new_st is None and not _is_featdump(path):
        raise UsageError(f"--resume: {path} is not a featdump file; use --overwrite to replace it")
    parent = target.parent if str(target.parent) else Path(".")  # where the file is written
    if not parent.is_dir():  # docs/options.md: -o DIR/OUT.h5 creates missing folders, like mkdir -p
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"-o {path}: cannot create folder {parent}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK):
        try:
            why = "is on a read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "is not writable"
        except OSError:
            why = "is not writable"
        keep = f"; {path.name} is untouched and stays resumable there" if st is not None else ""
        raise FeatdumpError(f"cannot write the output: folder {parent} {why}{keep}; choose a writable folder for -o")


def output_target(path: Path) -> tuple[Path, os.stat_result | None]:
    """The file ``-o`` names (:func:`_target`) and what is there now (None: nothing, symlinks followed);
    anything but a regular file, or a dangling or looping symlink (featdump would create a file
    somewhere the user did not name), is a UsageError."""
    st = _lstat(path)
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError as exc:
            if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                raise UsageError(
                    f"-o {path} is a symbolic link to {os.readlink(path)}, which does not exist; featdump writes "
                    "only regular files: remove the link, or name a file"
                ) from None
            raise _path_error(path, exc) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        shown = f"{path} (a link to {os.readlink(path)})" if os.path.islink(path) else str(path)
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"-o {shown} is a folder; name an .h5 file")
        raise UsageError(
            f"-o {shown} is {file_kind(st.st_mode)}, not a regular file; featdump writes only regular "
            "files: name an .h5 file"
        )
    return _target(path), st


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _path_error(path, exc) from None


def _path_error(path: Path, exc: OSError) -> FeatdumpError:
    if exc.errno == errno.ENAMETOOLONG:
        return UsageError(f"-o {str(path)[:80]}...: the name is too long for the file system")
    if exc.errno == errno.ELOOP:
        return UsageError(f"-o {path}: too many levels of symbolic links (a link loop?); name a regular file")
    return os_error(exc, path, "look at")


def _check_leftover(jpath: Path, target: Path) -> None:
    """A journal path that holds a folder, device, FIFO or socket: a writer cannot use it."""
    st = _lstat(jpath)
    if st is not None and not stat.S_ISREG(st.st_mode) and not (stat.S_ISLNK(st.st_mode) and os.path.isfile(jpath)):
        raise not_a_journal(jpath, target, st.st_mode)


def _is_featdump(path: Path) -> bool:
    """Did featdump make this file? A journal that names it (even with nothing committed yet), or
    HDF5 with ``format = "featdump"`` at its last commit."""
    if journal_names(path):
        return True
    try:
        import h5py

        if not h5py.is_hdf5(path):
            return False
        with open_committed(path) as h5:
            return to_str(h5.attrs.get("format", "")) == "featdump"
    except Exception:  # noqa: BLE001 - whatever cannot be read as a featdump file is not one to resume
        return False


def _target(path: Path) -> Path:
    """The file ``-o`` names: a symlink's target (so that ``--overwrite`` replaces the file the link
    points to, and the link stays), else ``path`` itself."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def overwrite_path(path: Path) -> Path:
    """Where ``--overwrite`` writes the new file until it replaces ``path`` (``--resume`` finds it there)."""
    return path.with_name(f"{path.name}.featdump-new")


def resume_attrs(out_path: Path) -> dict[str, Any] | None:
    """The attributes of the file ``--resume`` continues (its ``--overwrite`` replacement first);
    None when there is none, or it cannot be read here (the resume itself then says why)."""
    for candidate in (overwrite_path(out_path), out_path):
        if candidate.is_file():
            try:
                return read_attrs(candidate)
            except Exception:  # noqa: BLE001 - see above
                return None
    return None


@dataclass
class Output(AbstractContextManager["Output"]):
    """The file being written, and (for --overwrite) the target it replaces at the end."""

    store: Store
    target: Path
    lock: Any = None  # OutputLock on the target while a replacement for it is written

    @property
    def replacing(self) -> bool:
        return self.store.path != self.target

    def __exit__(self, kind: Any, *_: Any) -> None:
        """The store closed; after a successful run the replacement moved into place (atomically) and
        the target let go, its journal removed (it no longer applies to anything)."""
        finished = False
        try:
            self.store.close()
            if kind is None and self.replacing:
                try:
                    os.replace(self.store.path, self.target)
                    fsync_dir(self.target)
                except OSError as exc:
                    raise FeatdumpError(
                        f"cannot replace {self.target} with {self.store.path}: {exc.strerror or exc}; "
                        "rerun with --resume to try again"
                    ) from None
            finished = kind is None
        finally:
            if self.lock is not None:
                self.lock.release(remove=finished or self.lock.created)


def open_output(cfg: ExtractConfig, out_path: Path, attrs: dict[str, Any], layers: Sequence[LayerInfo]) -> Output:
    """Create, continue or replace the output, as ``--resume`` / ``--overwrite`` ask.

    ``--resume`` continues an unfinished ``--overwrite`` run (``OUT.h5.featdump-new``) first, then
    OUT.h5 (a complete file is left as it is); with neither it starts OUT.h5, so one command line
    serves the first run and every requeue.
    """
    out_path = _target(out_path)
    st = _lstat(out_path)  # again: the model took a while to load, and only regular files are replaced
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"-o {out_path} is {file_kind(st.st_mode)}, not a regular file; featdump writes only regular files")

    def create(path: Path) -> Store:
        return Store.create(path, attrs, layers, pool=cfg.pool, dtype=cfg.dtype, compression=cfg.compression)

    def resume(path: Path) -> Store:
        try:
            return Store.resume(path, attrs, layers)
        except NothingCommitted:  # no commit to continue: as if there were no file
            return create(path)

    def replace_new() -> Store:
        if new.exists() or journal_path(new).exists():  # an earlier --overwrite that did not finish
            stale = OutputLock(new)
            new.unlink(missing_ok=True)
            stale.release(remove=True)
        return create(new)

    new = overwrite_path(out_path)
    if (cfg.resume and new.exists()) or (cfg.overwrite and out_path.exists()):
        lock = OutputLock(out_path)  # the target's, while its replacement is written
        try:
            return Output(resume(new) if cfg.resume else replace_new(), out_path, lock)
        except BaseException:
            lock.release(remove=lock.created)
            raise
    return Output(resume(out_path) if cfg.resume and out_path.exists() else create(out_path), out_path)
