"""Commands on featdump files and the model catalog: ``show``, ``viz``, ``models``, ``verify``,
``processors``, ``merge``, ``fetch``, ``export`` (the Typer app: featdump/cli/typer_app.py)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from featdump.cli.typer_app import app, fail, handle_errors
from featdump.errors import FeatdumpError, UsageError
from featdump.text import printable

if TYPE_CHECKING:
    from featdump.store.merge import MergeSummary

# --------------------------------------------------------------------------- show / viz / models


@app.command()
@handle_errors
def show(
    path: Annotated[Path, typer.Argument(help="A featdump .h5 file: finished, partial, a shard or merged.")],
    failures: Annotated[int, typer.Option("--failures", help="How many failed images to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only the exit status tells.")] = False,
    layer: Annotated[str | None, typer.Option("--layer", help="With --row: statistics of one stored map.")] = None,
    row: Annotated[int | None, typer.Option("--row", help="With --layer: the file row (negative: from the end).")] = None,
    paths: Annotated[
        bool, typer.Option("--paths", help="List the stored image paths, one per line, in row order (--json: a list).")
    ] = False,
) -> None:
    """Summary of a featdump file: datasets (shape, dtype, chunks, compression, MiB on disk), provenance, failures.

    Merged files are checked for missing virtual source files (exit 1 when any is missing).
    Other HDF5 files and non-HDF5 files exit 2. With --layer and --row: one stored map's min, max,
    mean, share of zeros and per-channel norms.

    Example: featdump show feats.h5 --json

    Example: featdump show feats.h5 --layer layer3 --row 0

    Example: featdump show feats.h5 --paths | head
    """
    from featdump.cli.render import console, map_stats_table, show_renderables
    from featdump.store.describe import summarize_file

    if (layer is None) != (row is None):
        raise UsageError("--layer and --row go together: featdump show FILE --layer NAME --row R")
    if layer is not None and row is not None:
        from featdump.store.stats import map_stats

        stats = map_stats(path, layer, row)
        if as_json:
            sys.stdout.write(json.dumps(stats, indent=2) + "\n")
        elif not quiet:
            console().print(map_stats_table(stats))
        return
    if paths:
        from featdump import open as open_file

        with open_file(path) as ff:
            stored = list(ff.paths)
        if as_json:
            sys.stdout.write(json.dumps(stored, indent=2, ensure_ascii=False) + "\n")
        elif not quiet:
            for p in stored:
                typer.echo(printable(p))
        return

    info = summarize_file(path, max_failures=max(0, failures))
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
    elif not quiet:
        out = console()
        for part in show_renderables(info):
            out.print(part)
    if gone := info["missing_sources"]:
        raise FeatdumpError(
            f"{len(gone)} virtual source file(s) of {path} are missing (e.g. {gone[0]}); "
            "their rows read as the fill value (NaN in files written by `featdump merge`) until they are put back"
        )


@app.command()
@handle_errors
def viz(
    path: Annotated[Path, typer.Argument(help="A featdump .h5 file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG picture to write.")],
    image: Annotated[
        list[str] | None, typer.Option("--image", help="Row number or stored path (repeatable; default: the first 4).")
    ] = None,
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="Stored layer name (repeatable; default: all).")
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Folder the stored image paths are relative to.")
    ] = None,
    tile: Annotated[int, typer.Option("--tile", help="Tile width in pixels.")] = 160,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Draw each spatial layer's PCA map over the original image (/geometry).")
    ] = False,
    random: Annotated[
        int | None,
        typer.Option("--random", metavar="N", help="Draw N images picked at random (shown in row order; not with --image)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", metavar="S", help="Seed of the --random picks (default: 0).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Draw stored feature maps: per image, the input then each layer as a PCA of channels -> RGB.

    The PCA is fitted per layer across the shown images. Pooled vectors are drawn as bars of each
    image's largest channels (channel number and value; one scale per layer), and with 3 or more
    images, a last row holds a 2-D PCA scatter per pooled layer: one dot per image, in the colour of
    its row. Input images are read again as verify reads them (tar members and table rows from the
    recorded shards and table; files by their stored paths, relative ones looked up under --root, the
    recorded INPUT folders, the current folder and the file's folder).

    Rows: --image (row number or stored path, repeatable), or --random N: N rows drawn without
    replacement among the file's rows, the same ones for the same --seed (default 0), shown in row
    order (all rows if N is larger); default the first 4.

    With --overlay, each spatial layer's map is painted over the whole original image, every cell
    in its box (the file's /geometry), so crops and padding line up.

    Example: featdump viz feats.h5 -o feats.png --image 0 --image cats/tom.jpg --layer layer2

    Example: featdump viz feats.h5 -o sample.png --random 8 --seed 3
    """
    if overlay:  # each cell painted into its box in the original image (FeatureFile.pixel_boxes)
        from featdump.overlay import render_overlay as render
    else:
        from featdump.viz import render

    result = render(path, output, images=image, layers=layer, tile=tile, root=root, random=random, seed=seed)
    if not quiet:
        typer.echo(
            f"wrote {printable(result.output)} ({result.width}x{result.height}): {len(result.rows)} image(s) × "
            f"{len(result.layers)} layer(s)"
        )
        if result.missing:
            typer.echo(f"{len(result.missing)} input image(s) not found, drawn as placeholders: {printable(result.why)}", err=True)


@app.command()
@handle_errors
def models(
    pattern: Annotated[str, typer.Argument(help="Glob over timm model names, e.g. 'resnet*' or '*vit_small*'.")] = "*",
    pretrained: Annotated[bool, typer.Option("--pretrained", help="Only models with pretrained weights.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Names only, one per line.")] = False,
) -> None:
    """List timm model names matching a glob, their pretrained tags, and whether --output-stride works.

    Example: featdump models 'convnext*' --pretrained
    """
    from featdump.cli.render import console, models_table
    from featdump.model.catalog import check_pattern, list_models

    rows = list_models(check_pattern(pattern), pretrained=pretrained)
    if not rows:
        which = "timm model with pretrained weights" if pretrained else "timm model"
        hint = "see `featdump models` for every name" if "*" in pattern or "?" in pattern else f"patterns are globs, e.g. '{pattern}*' or '*{pattern}*'"
        raise UsageError(f"no {which} matches {pattern!r}; {hint}")
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if quiet:
        for r in rows:
            typer.echo(r["name"])
        return
    console().print(models_table(rows, pattern))


# --------------------------------------------------------------------------- trust: verify / processors


@app.command()
@handle_errors
def verify(
    path: Annotated[Path, typer.Argument(help="A featdump .h5 file: finished, partial, a shard or merged.")],
    n: Annotated[int, typer.Option("-n", help="How many random stored rows to re-extract.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the row draw.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto|cpu|cuda|cuda:N|mps.")] = "auto",
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="The file's checkpoint moved: the same bytes (sha256) here.")
    ] = None,
    max_image_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-image-bytes", min=1, help="Read no image past this many bytes (give extract's: the file does not record it). \\[default: 256 MiB]"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only the exit status tells.")] = False,
) -> None:
    """Re-extract random stored rows with the settings recorded in the file and compare.

    Prints per layer the largest absolute difference and the smallest cosine similarity. Exit 0
    within the tolerance of the file's precision and dtype (docs/trust.md), 1 outside it (rows
    named), 2 when it cannot check (weights, checkpoint sha256, inputs, mean/std, processor or timm version).

    Example: featdump verify feats.h5 -n 16 --seed 1
    """
    from featdump.cli.render import console, verify_table
    from featdump.run.verify import verify_file

    report = verify_file(path, n=n, seed=seed, device=device, checkpoint=checkpoint, max_image_bytes=max_image_bytes)
    if as_json:
        sys.stdout.write(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2) + "\n")
    elif not quiet:
        console().print(verify_table(report))
    if not report.ok:
        named = ", ".join(f"{r} ({report.paths[report.rows.index(r)]})" for r in report.bad_rows[:5])
        named += f" … and {len(report.bad_rows) - 5} more" if len(report.bad_rows) > 5 else ""
        raise FeatdumpError(f"{len(report.bad_rows)} of {len(report.rows)} checked row(s) differ beyond the tolerance: {named}")


@app.command()
@handle_errors
def processors(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
) -> None:
    """List the feature processors for --process: built in, and those installed packages register
    under the featdump.processors entry-point group.

    Example: featdump processors
    """
    from featdump.cli.render import console, processors_table
    from featdump.run.processors import installed

    rows = installed()
    if as_json:
        sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")
        return
    console().print(processors_table(rows))


# --------------------------------------------------------------------------- cluster: merge / fetch


@app.command()
@handle_errors
def merge(
    shards: Annotated[
        list[Path],
        typer.Argument(help="Shard files of one run, all N of them (any order); or whole runs, joined in the order given."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Merged HDF5 file to write.")],
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy the rows into a self-contained file (default: virtual, no copy).")
    ] = False,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Merge unfinished shards too (the file says complete=false).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Join the shard files of a sharded run into one file, rows in the order of a single run.

    Files of several runs (say old.h5 and new.h5, extracted with --like old.h5) are joined one run
    after the other, in the order given, when each run is given whole (all its shards), they share
    every setting that gives the rows their meaning, and no image path is in two of them.

    By default the result is an HDF5 virtual file: seconds for any size, reading from the shards
    (stored relative to the merged file, so move them together). --copy writes a self-contained file.
    Refuses a missing, duplicated, unfinished or mismatched shard, naming it.

    Example: featdump merge out/feats.shard-*.h5 -o out/feats.h5
    """
    from featdump.store.merge import merge_shards

    summary = merge_shards(
        shards,
        output,
        copy=copy,
        allow_partial=allow_partial,
        overwrite=overwrite,
        command=shlex.join(["featdump", *sys.argv[1:]]),
    )
    if quiet:
        return
    typer.echo(merge_line(summary))
    for name in summary.skipped:
        typer.echo(f"skipped {printable(name)}: no rows")
    for name in summary.partial:
        typer.echo(f"unfinished shard merged as far as it goes: {printable(name)}", err=True)


def merge_line(summary: MergeSummary) -> str:
    """``wrote OUT: N images, F failed, of M from K shards · complete · virtual: ...`` (merge, extract --ray)."""
    from featdump.store.check import tar_progress

    state = "complete" if summary.complete else "NOT complete (--allow-partial)"
    how = "virtual: reads the shard files, found relative to it; keep them next to each other"
    how = "self-contained copy" if summary.mode == "copy" else how
    what = f"{summary.num_shards} shards" if summary.num_runs == 1 else f"{summary.num_shards} files of {summary.num_runs} runs"
    counts = f"{summary.num_images} images, {summary.num_failed} failed"
    if summary.input_kind == "tar":  # num_inputs counts tar files, inputs_done samples: say both
        counts += f" · {tar_progress(summary.inputs_done, summary.num_inputs, summary.complete)} · merged from {what}"
    else:
        counts += f", of {summary.num_inputs} from {what}"
    return f"wrote {printable(summary.output)}: {counts} · {state} · {how}"


@app.command()
@handle_errors
def fetch(
    models: Annotated[list[str], typer.Argument(help="timm model names, optionally with a tag: resnet50.a1_in1k.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the cached file paths.")] = False,
) -> None:
    """Download pretrained weights into the local cache, for compute nodes without internet.

    Run it on a login node; jobs then run with HF_HUB_OFFLINE=1 and the same HF_HOME (a shared folder).

    Example: HF_HOME=/shared/hf featdump fetch resnet50 convnext_tiny.fb_in22k
    """
    from featdump.model.fetch import fetch_weights, hub_cache, weights_source

    sources = [weights_source(name) for name in dict.fromkeys(models)]  # every name checked before any download
    errors: list[str] = []
    for src in sources:
        try:
            got = fetch_weights(src)
        except FeatdumpError as exc:
            errors.append(str(exc))
            fail(str(exc), 1)  # writes the line; the other models are still fetched
            continue
        if quiet:
            typer.echo(str(got.path))
            continue
        where = "hf-hub:" + src.location if src.kind == "hf-hub" else src.location
        state = "already cached" if got.cached else "downloaded"
        typer.echo(f"{src.model}: {src.label} ({where}) {got.bytes / 1e6:.1f} MB, {state}\n  {got.path}")
    if errors:
        raise FeatdumpError(f"{len(errors)} of {len(sources)} model(s) not fetched (see above)")
    if not quiet:
        typer.echo(f"cache: {hub_cache()} · on compute nodes set the same HF_HOME and HF_HUB_OFFLINE=1")


# --------------------------------------------------------------------------- export


@app.command()
@handle_errors
def export(
    path: Annotated[Path, typer.Argument(help="A featdump .h5 file: finished, partial (committed rows), a shard or merged.")],
    output: Annotated[
        str, typer.Option("-o", "--output", help="Folder or fsspec URL (s3://, gs://, file://) to write: new or empty, unless --overwrite.")
    ],
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="Stored layer name (repeatable). \\[default: all]")
    ] = None,
    pool: Annotated[
        str | None, typer.Option("--pool", help="avg|max over H×W (token layers: the patch tokens); map layers need it.")
    ] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="float16|float32. \\[default: the stored dtype]")] = None,
    rows_per_part: Annotated[int, typer.Option("--rows-per-part", help="Rows per .npy/.parquet part (zarr: per chunk, at most).")] = 100_000,
    fmt: Annotated[
        str, typer.Option("--format", help="npy (embedding-reader layout), safetensors (up to 2 GiB) or zarr (a Zarr v3 store).")
    ] = "npy",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export, or write into a folder that is not empty.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Write pooled vectors for other tools: DIR/<layer>/emb/part-00000.npy + DIR/<layer>/metadata/part-00000.parquet.

    Rows in file order, parts of at most --rows-per-part rows; the parquet parts hold row, path (and
    id). embedding-reader reads it with file_format="parquet_npy"; autofaiss and faiss index it.
    --format safetensors writes DIR/features.safetensors, one tensor per layer; --format zarr makes DIR
    a Zarr v3 store (one array per layer, maps whole unless --pool). DIR may be an fsspec URL. The export
    is complete when DIR/featdump-export.json says so (written last); rerunning an unfinished one replaces it.

    Example: featdump export feats.h5 -o emb/ --layer layer4 --pool avg --dtype float16
    """
    from featdump.store.export import export_file

    summary = export_file(
        path, output, layers=layer, pool=pool, dtype=dtype, rows_per_part=rows_per_part, fmt=fmt, overwrite=overwrite
    )
    if as_json:
        sys.stdout.write(json.dumps(dataclasses.asdict(summary), indent=2) + "\n")
    if as_json or quiet:
        return
    what = ", ".join(
        f"{l.name} ({'×'.join(str(s) for s in l.shape)} {l.dtype}{', ' + str(pool) + '-pooled' if l.pooled_here else ''})"
        for l in summary.layers
    )
    parts = {"safetensors": "features.safetensors", "zarr": "zarr store"}.get(summary.format, f"{summary.parts} part(s) per layer")
    size = f"{summary.bytes / 1e6:.1f} MB" if summary.bytes >= 1e5 else f"{summary.bytes / 1e3:.1f} kB"
    typer.echo(f"wrote {summary.output}: {summary.rows} rows of {what} · {parts} · {size}")
