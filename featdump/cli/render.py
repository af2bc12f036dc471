"""Rich tables: the only place that formats results for humans (progress: featdump/cli/progress.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from featdump.store.check import tar_progress
from featdump.text import clip, fmt_bytes, printable
from featdump.values import size_mode_text

if TYPE_CHECKING:
    from featdump.model.layers import Description, LayerInfo
    from featdump.run.results import Summary

MB = 1024 * 1024
EXAMPLE_IMAGE = (3024, 4032)  # (height, width): the photo inspect shows a size mode's shapes for


def cell(value: Any) -> Text:
    """A table cell or title from untrusted text: control characters escaped, no rich markup."""
    return Text(printable(value))


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False, emoji=False)  # long:100 is not an emoji code


def fmt_shape(shape: Sequence[int | str]) -> str:
    return "×".join(str(d) for d in shape)


def fmt_mb(nbytes: float) -> str:
    mb = nbytes / MB
    if mb == 0:
        return "0"
    if mb < 0.01:
        return f"{mb:.4f}"
    if mb < 10:
        return f"{mb:.2f}"
    return f"{mb:,.1f}"


def layer_dict(layer: LayerInfo, pool: str = "none") -> dict[str, Any]:
    return {
        "index": layer.index,
        "name": layer.name,
        "module": layer.module,
        "channels": layer.channels,
        "reduction": layer.reduction,
        **({"pixel_grid": layer.attrs["pixel_grid"]} if "pixel_grid" in layer.attrs else {}),  # after --process
        "shape": list(layer.stored_shape(pool)),
        "layout": layer.layout,
        **{f"mb_per_image_{dtype}": layer.bytes_per_image(dtype, pool) / MB for dtype in ("float32", "float16")},
    }


def stride_text(layer: LayerInfo) -> str:
    """The stride column: input pixels per cell; after a --process that moves the cells, per axis
    with their offset (``64x32 +16,+0``); ``-`` where the cells are not places in the input."""
    grid = layer.attrs.get("pixel_grid")
    if not layer.reduction or grid == []:
        return "-"
    if not grid or (grid[0] == grid[2] and not grid[1] and not grid[3]):
        return str(layer.reduction)
    return f"{grid[0]:g}x{grid[2]:g} {grid[1]:+g},{grid[3]:+g}"


def description_dict(desc: Description, pool: str = "none", images: int | None = None, dtype: str = "float32") -> dict[str, Any]:
    d = desc.data
    out: dict[str, Any] = {
        "model": desc.name,
        "num_levels": desc.num_levels,
        "out_indices": list(desc.out_indices) if desc.out_indices is not None else [l.index for l in desc.layers],
        "output_stride": desc.output_stride,
        "pool": pool,
        "data_config": {
            "input_size": list(d.input_size),
            "mean": list(d.mean),
            "std": list(d.std),
            "interpolation": d.interpolation,
            "crop_pct": d.crop_pct,
            "crop_mode": d.crop_mode,
            **({"img_size_mode": size_mode_text(d.size_mode), "unit": d.unit, "max_side": d.max_side} if d.size_mode else {}),
        },
        "layers": [layer_dict(layer, pool) for layer in desc.layers],
    }
    if images is not None:  # disk planning: uncompressed bytes of N images at --dtype/--pool
        for entry, layer in zip(out["layers"], desc.layers, strict=True):
            entry["total_bytes"] = layer.bytes_per_image(dtype, pool) * images
        out.update(images=images, dtype=dtype, total_bytes=sum(entry["total_bytes"] for entry in out["layers"]))
    return out


def inspect_table(desc: Description, pool: str = "none", images: int | None = None, dtype: str = "float32") -> Table:
    d = desc.data
    caption = (
        f"input {fmt_shape(d.input_size)} · {d.interpolation} · crop_pct {d.crop_pct:g} · crop_mode {d.crop_mode}\n"
        if not d.size_mode
        else f"--img-size {size_mode_text(d.size_mode)}: each image at its own aspect, sides rounded to multiples of "
        f"{d.unit} (the unit); shapes for a {EXAMPLE_IMAGE[1]}×{EXAMPLE_IMAGE[0]} photo (input {fmt_shape(d.input_size)}) · "
        f"{d.interpolation}\n"
    ) + (
        f"mean {tuple(round(v, 4) for v in d.mean)}\nstd {tuple(round(v, 4) for v in d.std)}"
    )
    stride = f" · output stride {desc.output_stride}" if desc.output_stride else ""
    named = bool(desc.layers) and all(layer.index < 0 for layer in desc.layers)
    if named:
        title = f"{desc.name}: {len(desc.layers)} named module(s){stride}"
    else:
        title = f"{desc.name}: {len(desc.layers)} of {desc.num_levels} feature levels{stride}"
        if len(desc.layers) < desc.num_levels:
            caption += f"\n--out-indices all lists all {desc.num_levels} levels"
    table = Table(title=title, caption=caption)
    if not named:  # named modules (--layers) have no level index
        table.add_column("index", justify="right")
    longest = max((len(layer.module) for layer in desc.layers), default=6)
    table.add_column("module", no_wrap=True, min_width=min(longest, 24), overflow="fold")  # blocks.0 stays whole
    table.add_column("channels", justify="right")
    table.add_column("stride", justify="right")
    table.add_column("shape", justify="right", no_wrap=True)
    dtypes = ("float32", "float16") if images is None else (dtype,)  # --images: its dtype only (fits 80 columns)
    for name in dtypes:
        table.add_column(f"MiB {name.replace('float', 'f')}", justify="right")
    if images is not None:
        table.add_column("total", justify="right", no_wrap=True)  # the caption says for how many images
    for layer in desc.layers:
        cells = [
            layer.module,
            str(layer.channels),
            stride_text(layer),
            fmt_shape(layer.stored_shape(pool)),
            *(fmt_mb(layer.bytes_per_image(name, pool)) for name in dtypes),
        ]
        if images is not None:
            cells.append(fmt_bytes(layer.bytes_per_image(dtype, pool) * images))
        table.add_row(*([] if named else [str(layer.index)]), *cells)
    if images is not None:
        total = sum(layer.bytes_per_image(dtype, pool) for layer in desc.layers) * images
        table.caption = f"{images:,} images at {dtype}, pool {pool}: {fmt_bytes(total)} uncompressed\n" + str(table.caption)
    return table


def verify_table(report: Any) -> Table:
    """``featdump verify``: per layer the largest difference and the smallest cosine similarity."""
    title = cell(f"{report.path}: {len(report.rows)} row(s) re-extracted on {report.device}")
    right = [Column(name, justify="right") for name in ("max |diff|", "max rel", "min cosine", "rows outside")]
    table = Table(Column("layer", no_wrap=True), *right, title=title)
    for layer in report.layers:
        bad = ", ".join(str(r) for r in layer.bad_rows) or "-"
        table.add_row(cell(layer.name), f"{layer.max_abs:.3g}", f"{layer.max_rel:.3g}", f"{layer.min_cos:.6f}", bad)
    table.caption = (
        f"tolerance for {report.precision} / {report.dtype}"
        + (f" (widened: {'; '.join(report.widened)})" if report.widened else "")
        + f": |diff| <= {report.rtol:g} x max|stored| per row, cosine >= {report.min_cos:g} · "
        f"{'OK' if report.ok else 'MISMATCH'}"
    )
    return table


def processors_table(rows: Sequence[Any]) -> Table:
    columns = (Column("name", no_wrap=True), Column("from", no_wrap=True), "what it does")
    table = Table(*columns, title="feature processors (--process NAME[:ARG[:ARG]])")
    for p in rows:
        table.add_row(cell(p.name), cell(p.source), cell(p.doc or p.target))
    return table


def modules_dict(name: str, data: Any, records: Sequence[Any]) -> dict[str, Any]:
    """``inspect --all-modules --json``."""
    return {
        "model": name,
        "input_size": list(data.input_size),
        "modules": [
            {"name": r.name, "type": r.kind, "shape": list(r.shape) if r.shape is not None else None,
             "calls": r.calls, "output": r.output}
            for r in records
        ],
    }  # fmt: skip


def modules_table(name: str, data: Any, records: Sequence[Any]) -> Table:
    """``inspect --all-modules``: every module name a ``--layers`` list may use, with its output shape."""
    table = Table(
        "module", "type", Column("output / image", justify="right"), Column("runs", justify="right"),
        title=f"{name}: {len(records)} modules (any of these works with --layers)",
        caption=f"output shape per image at input {fmt_shape(data.input_size)}; '-' = not one tensor or never run",
    )
    for r in records:
        shape = fmt_shape(r.shape) if r.shape is not None else ("-" if r.calls == 0 else r.output)
        table.add_row(r.name, r.kind, shape, str(r.calls))
    return table


def summary_table(summary: Summary) -> Table:
    shard = f" · shard {summary.shard[0]}/{summary.shard[1]}" if summary.shard[1] > 1 else ""
    table = Table(
        "layer", "module", Column("stride", justify="right"), Column("shape / image", justify="right", no_wrap=True),
        "dtype", Column("MiB on disk", justify="right"),
        Column("stored/raw", justify="right"),  # bytes on disk / uncompressed bytes
        title=cell(f"{summary.output}: {summary.model}{shard}"),
    )
    for layer in summary.layers:
        ratio = layer.stored_bytes / layer.raw_bytes if layer.raw_bytes else 1.0
        table.add_row(
            cell(layer.name),
            cell(layer.module),
            str(layer.reduction),
            fmt_shape(layer.shape),
            layer.dtype,
            fmt_mb(layer.stored_bytes),
            f"{ratio:.2f}",
        )
    rate = f"{summary.images_per_second:.1f} images/s" if summary.images_this_run else "nothing new to do"
    if summary.images_this_run and not summary.num_images:  # every input failed: no rate to boast of
        rate = "no image could be read"
    if summary.images_this_run and summary.bytes_written:
        rate += f", {summary.mb_per_second:.1f} MiB/s of features written"
    resumed = f" · resumed after {summary.resumed_from}" if summary.resumed_from else ""
    state = "complete" if summary.complete else "NOT complete"
    table.caption = (
        f"{summary.num_images} images written, {summary.num_failed} failed, of {summary.num_inputs} · "
        f"{summary.device} · {rate}{resumed} · {state}"
    )
    return table


def failures_table(failures: Sequence[tuple[str, str]], total: int) -> Table:
    more = f" (first {len(failures)} of {total})" if total > len(failures) else ""
    table = Table("path", "why", title=f"failed images{more}: listed under /failed in the file")
    for path, err in failures:
        table.add_row(cell(clip(path)), cell(clip(err)))
    return table


def bench_table(result: Any) -> None:
    """``featdump bench``'s report: one row per stage, the limit and what to try (stdout)."""
    out = console()
    table = Table(title=f"featdump bench: {result.model} on {result.device} "
                        f"(batch {result.batch_size}, {result.workers} decoding worker(s), "
                        f"{result.write_threads} writer thread(s), {fmt_mb(result.bytes_per_image)} MiB/image as stored)")
    for col in ("stage", "images", "seconds", "img/s", "detail"):
        table.add_column(col, justify="right" if col in ("images", "seconds", "img/s") else "left")
    for s in result.stages:
        mark = " <- limit" if s.name == result.limit else ""
        table.add_row(s.name + mark, str(s.images), f"{s.seconds:.1f}", f"{s.rate:.1f}", printable(s.detail))
    table.caption = "timed from each stage's first batch on (start-up left out)"
    out.print(table)
    if result.note:
        out.print(f"note: {result.note}")
    out.print(f"limit: {result.limit}. Try:")
    for line in result.advice:
        out.print(f"  - {line}")


# --------------------------------------------------------------------------- show / models


def _fmt_value(value: Any, width: int = 100) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list):
        text = "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def show_renderables(info: dict[str, Any]) -> list[Any]:
    """``featdump show``: the datasets table, the provenance table and the first failures."""
    attrs = info["attrs"]
    shard = info.get("shard") or [0, 1]
    parts = [f"{info['num_images']} images", f"{info['num_failed']} failed"]
    if info.get("num_inputs") not in (None, "") and info.get("input_kind") == "tar":  # samples of tar files
        parts[-1] += ", " + tar_progress(info["inputs_done"], info["num_inputs"], info["complete"], info.get("tar_files_done"))
    elif info.get("num_inputs") not in (None, ""):
        parts[-1] += f", {info['inputs_done']} of {info['num_inputs']} inputs done"
    if isinstance(shard, list) and len(shard) == 2 and shard[1] > 1:
        parts.append(f"shard {shard[0]}/{shard[1]}")
    if info["virtual"]:
        parts.append("merged (virtual datasets)")
    parts.append("complete" if info["complete"] else "NOT complete (partial: rows below num_images are trusted)")
    if info.get("journal"):
        parts.append("journal present: a run is writing it, or was killed (--resume finishes it)")
    parts.append(f"{fmt_mb(info['file_bytes'])} MiB file")
    table = Table(
        Column("dataset", overflow="fold"), Column("shape", justify="right", no_wrap=True), "dtype",
        Column("chunks", justify="right", no_wrap=True), Column("codec", overflow="fold"),
        Column("MiB", justify="right"),
        Column("stored/raw", justify="right"),  # bytes on disk / uncompressed bytes
        title=cell(f"{info['file']}: {attrs.get('model', '?')}"), caption=" · ".join(parts),
    )
    for ds in info["datasets"]:
        comp = ds["compression"]
        if ds["virtual"]:
            comp = f"virtual, {ds['virtual_sources']} file(s)"
            if ds["missing_sources"]:
                comp += f", {ds['missing_sources']} MISSING"
        note = f" (+{ds['uncommitted_rows']} uncommitted)" if ds["uncommitted_rows"] else ""
        shape = fmt_shape(ds["shape"])
        if ds["ragged"]:  # cells x C, each row at its own grid
            r = ds["ragged"]
            shape = f"ragged {r['cells']} cells×{ds['shape'][1]}"
            shape += f", h×w {fmt_shape(r['grid_min'])} to {fmt_shape(r['grid_max'])}" if r["grid_min"] else ""
        table.add_row(
            cell(ds["name"]),
            shape + note,
            ds["dtype"],
            fmt_shape(ds["chunks"]) if ds["chunks"] else "-",
            comp,
            fmt_mb(ds["stored_bytes"]) if not ds["virtual"] else "-",
            f"{ds['ratio']:.2f}" if ds["ratio"] else "-",
        )
    prov = Table(Column("key", style="bold"), Column("value", overflow="fold"), title="provenance", show_header=False)
    for key, value in attrs.items():
        prov.add_row(cell(key), cell(str(value) if key in ("command", "inputs") else _fmt_value(value)))  # whole
    out: list[Any] = [table, prov]
    if info["failures"]:
        out.append(failures_table([(f["path"], f["error"]) for f in info["failures"]], info["num_failed"]))
    if info.get("plain_reader"):
        out.append(Text(info["plain_reader"]))
    if info["missing_sources"]:
        why = "their rows would read as the fill value (NaN from `featdump merge`)"
        miss = Table(Column("file", overflow="fold"), title=f"MISSING virtual source files: {why}")
        for p in info["missing_sources"]:
            miss.add_row(cell(p))
        out.append(miss)
    return out


def models_table(rows: Sequence[dict[str, Any]], pattern: str) -> Table:
    """``featdump models``: names, pretrained tags and whether ``--output-stride`` works."""
    stride = Column("--output-stride", justify="center", style="green")
    table = Table("model", "pretrained weights", stride, title=f"timm models matching {pattern!r}: {len(rows)}")
    for r in rows:
        tags = r["pretrained_tags"]
        shown = ", ".join(tags[:3]) + (f" (+{len(tags) - 3})" if len(tags) > 3 else "") if tags else "-"
        table.add_row(r["name"], shown, "8/16" if r["output_stride"] else "-")
    return table


def map_stats_table(stats: dict[str, Any]) -> Table:
    """``featdump show FILE --layer NAME --row R``: one stored map's statistics."""

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.6g}"

    title = f"{stats['file']}: {stats['layer']} at row {stats['row']} ({stats['path']})"
    table = Table(Column("key", style="bold"), Column("value", overflow="fold"), title=cell(title), show_header=False)
    if "id" in stats:
        table.add_row("id", cell(stats["id"]))
    table.add_row("shape", f"{fmt_shape(stats['shape'])} {stats['dtype']} ({stats['layout']})")
    table.add_row("min / max", f"{num(stats['min'])} / {num(stats['max'])}")
    table.add_row("mean ± std", f"{num(stats['mean'])} ± {num(stats['std'])}")
    table.add_row("zeros", f"{stats['zeros']:.1%}")
    if stats["non_finite"]:
        table.add_row("NaN / inf", f"{stats['non_finite']} values")
    cn = stats["channel_norms"]
    table.add_row(
        f"channel L2 norms ({stats['channels']})",
        f"min {num(cn['min'])} (channel {cn['argmin']}) · median {num(cn['median'])} · mean {num(cn['mean'])} · "
        f"max {num(cn['max'])} (channel {cn['argmax']})" + (f" · {cn['zero_channels']} all-zero" if cn["zero_channels"] else ""),
    )
    return table
