"""The Typer app: parse, build the config, call the core, render, map errors to exit codes.

Nothing here imports torch at module level, so ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from inspect import Parameter, Signature
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import click
import typer

from featdump import __version__
from featdump.cli.typer_compat import click_exceptions, parameter_source
from featdump.errors import FeatdumpError, FeatdumpWarning, Interrupted, UsageError
from featdump.text import first_line, printable
from featdump.options import OPTIONS, Option

app = typer.Typer(
    name="featdump",
    help="Per-layer feature maps of timm backbones, streamed from image folders into HDF5.\n\nExample: featdump extract resnet50 photos/ -o feats.h5",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE: dict[str, Any] = {"debug": False, "own_process": False, "start": None}
F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"featdump {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Per-layer feature maps of timm backbones, streamed from image folders into HDF5.

    Example: featdump extract resnet50 photos/ -o feats.h5
    """
    from featdump.cli.signals import release_start_up

    _STATE["debug"] = debug
    start = _STATE["start"]
    if start is not None and start[0].stopped:
        raise fail(f"stopped by {signal.Signals(start[0].signum).name} during start-up; nothing was written", 128 + start[0].signum)
    if ctx.invoked_subcommand != "extract":  # extract keeps watching (guarded_run); the rest need no stop requests
        release_start_up(start)
        _STATE["start"] = None


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"featdump: error: {printable(message)}", err=True)
    return typer.Exit(code)


_PASS_THROUGH = click_exceptions()


def handle_errors(func: F) -> F:
    """Core exceptions -> one line on stderr and the SPEC's exit code (tracebacks with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except FeatdumpError as exc:
            if _STATE["debug"]:
                raise
            if isinstance(exc, Interrupted) and _STATE["own_process"]:
                # The file is committed and closed. Leave now: interpreter shutdown resets signal
                # handlers, and a second Ctrl-C landing there would kill us without a word.
                typer.echo(f"featdump: error: {printable(exc)}", err=True)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
            if _STATE["debug"]:
                raise
            text = first_line(exc, "")
            raise fail(f"{exc.__class__.__name__}: {text} (rerun with --debug for the traceback)", 1) from None

    return wrapper  # type: ignore[return-value]


def given_options(ctx: click.Context, names: list[str]) -> dict[str, Any]:
    """The options the user typed (not defaults), for the precedence defaults < file < flags."""
    out = {}
    for name in names:
        source = parameter_source(ctx, name)
        if source is not None and source not in ("DEFAULT", "DEFAULT_MAP"):
            out[name] = ctx.params[name]
    return out


# --------------------------------------------------------------------------- inspect


@app.command()
@handle_errors
def inspect(
    model: Annotated[str, typer.Argument(help="timm model name, e.g. resnet50 or convnext_tiny.fb_in22k")],
    out_indices: Annotated[
        Optional[str], typer.Option("--out-indices", help="Feature levels, e.g. 1,2,-1 (negatives from the end).")
    ] = None,
    output_stride: Annotated[
        Optional[int], typer.Option("--output-stride", help="Dilate late stages: 8 or 16 (where the model can).")
    ] = None,
    img_size: Annotated[Optional[str], typer.Option("--img-size", help="Input size: 224 or HEIGHTxWIDTH.")] = None,
    pool: Annotated[str, typer.Option("--pool", help="Show shapes as stored with none|avg|max pooling.")] = "none",
    layers: Annotated[
        Optional[str], typer.Option("--layers", help="Module names instead of levels, e.g. layer1.0,blocks.3.")
    ] = None,
    all_modules: Annotated[
        bool, typer.Option("--all-modules", help="List every module name (for --layers) with its output shape.")
    ] = False,
    tokens: Annotated[
        str, typer.Option("--tokens", help="Token outputs as seq (N,T,D), map (N,D,H,W, prefix tokens dropped) or both (map + <name>.prefix).")
    ] = "seq",
    images: Annotated[
        Optional[int], typer.Option("--images", help="Disk planning: add per-layer and total sizes for N images.")
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype of the --images totals: float32|float16.")] = "float32",
    process: Annotated[
        Optional[list[str]], typer.Option("--process", help="Processors, as extract takes them (stored shapes change).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
) -> None:
    """List a backbone's feature layers: module, channels, stride, shape and MiB per image.

    Builds the model on the meta device: no weights, no downloads.

    Example: featdump inspect resnet50 --out-indices 1,2,3 --img-size 256x320

    Example: featdump inspect resnet50 --images 1000000 --dtype float16 --pool avg

    Example: featdump inspect vit_small_patch16_224 --all-modules
    """
    from featdump import options as config
    from featdump.cli.render import console, description_dict, inspect_table
    from featdump.model.backbone import describe

    stride = output_stride
    if stride is not None and stride not in config.OUTPUT_STRIDES:
        raise UsageError(f"--output-stride must be one of 8|16|32, not {stride}")
    config._choice("pool", pool, config.POOLS)
    config._choice("tokens", tokens, config.TOKENS)
    names = config.parse_names(layers)
    indices = config.parse_indices(out_indices)
    if names is not None and indices is not None:
        raise UsageError("--out-indices and --layers exclude each other; pick feature levels or module names")
    if all_modules:
        from featdump.cli.render import modules_dict, modules_table
        from featdump.model.modules import list_modules

        data, records = list_modules(model, config.parse_img_size(img_size), stride)
        if as_json:
            sys.stdout.write(json.dumps(modules_dict(model, data, records), indent=2) + "\n")
        else:
            console().print(modules_table(model, data, records))
        return
    config._choice("dtype", dtype, config.DTYPES)
    if images is not None and images < 1:
        raise UsageError(f"--images must be a whole number >= 1, not {images}")
    desc = describe(model, indices, stride, config.parse_img_size(img_size), layers=names, tokens=tokens)
    if process:
        import dataclasses

        from featdump.run import processors

        procs = processors.load(config.parse_process(process))
        processors.prepare(procs, desc.data.input_size)
        desc = dataclasses.replace(desc, layers=processors.stored_layers(desc.layers, pool, procs))
    if as_json:
        sys.stdout.write(json.dumps(description_dict(desc, pool, images, dtype), indent=2) + "\n")
        return
    console().print(inspect_table(desc, pool, images, dtype))


# --------------------------------------------------------------------------- extract


def extract_parameters(table: Sequence[Option] = OPTIONS) -> Signature:
    """The ``extract`` command's parameters, derived from the option table (featdump/options.py)."""
    keyword = Parameter.KEYWORD_ONLY  # Typer passes every parameter by name
    params = [Parameter("ctx", keyword, annotation=typer.Context)]
    for o in table:
        info = typer.Argument(help=o.help) if o.argument else typer.Option(*o.flags, help=o.help)
        default = Parameter.empty if o.required else o.default
        params.append(Parameter(o.name, keyword, annotation=Annotated[o.cli_type, info], default=default))
    config = typer.Option("--config", help="TOML file of option defaults (flags win).")
    params.append(Parameter("config_file", keyword, annotation=Annotated[Optional[Path], config], default=None))
    return Signature(params, return_annotation=None)


def with_signature(signature: Signature) -> Callable[[F], F]:
    """Give a ``**values`` function the parameters Typer should read (set before other decorators wrap it)."""

    def apply(func: F) -> F:
        func.__signature__ = signature  # type: ignore[attr-defined]
        return func

    return apply


@app.command()
@handle_errors
@with_signature(extract_parameters())
def extract(ctx: typer.Context, **values: Any) -> None:
    """Stream images through a timm backbone and write one HDF5 dataset per layer.

    Example: featdump extract resnet50 photos/ -o feats.h5 --out-indices 1,2,3 --dtype float16

    Example: featdump extract resnet50 new_photos/ -o new.h5 --like feats.h5 --batch-size 64

    Example: featdump extract resnet50 photos/ -o fused.h5 --process resize:stride=8 --process l2norm

    Before the model loads, extract refuses (exit 2) when the -o folder's file system lacks room for
    the rows still to write: images x bytes per image (featdump inspect MODEL --images N) + 2% + 1 MiB,
    scaled with --compression by the codec's best measured ratio (gzip 0.46, lzf 0.53, zstd 0.47).
    """
    # Read by libgomp when torch loads (so set before it is imported): threads waiting at a barrier
    # sleep instead of spinning, so decoding workers, the writer and other jobs on the node do not
    # make the forward pass's threads burn their cores waiting (measured: docs/performance.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from featdump.cli.signals import guarded_run

    start, _STATE["start"] = _STATE["start"], None
    with guarded_run(start) as stop:  # a Ctrl-C during start-up is remembered, not lost in third-party code
        _extract(ctx, values["config_file"], stop)


def _extract(ctx: typer.Context, config_file: Path | None, stop: Any) -> None:
    from featdump import options as config
    from featdump.cli.signals import leave_at_once
    from featdump.cli.render import LogProgress, console, failures_table, nonfinite_line, progress_for, summary_table
    from featdump.run.job import run_extraction
    from featdump.store.like import recorded_options
    from featdump.run.results import nothing_read

    given = given_options(ctx, [o.name for o in OPTIONS])  # MODEL, INPUT... and -o are always given
    file_values = config.load_toml(config_file) if config_file else {}
    like = config.like_path(given, file_values)
    like_values = recorded_options(like) if like else None
    cfg = config.resolve(given, file_values, command=shlex.join(["featdump", *sys.argv[1:]]), like_values=like_values)
    progress = progress_for(cfg.quiet)  # a bar on a terminal, plain lines in a job's log
    if cfg.quiet:  # third-party RuntimeWarnings (numpy/torch on NaN values): what they mean is said below
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    ready = (lambda b, o, p: progress.ready(b, o, p, cfg.dtype, cfg.pool)) if isinstance(progress, LogProgress) else None
    shown = warnings.showwarning

    def featdump_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, FeatdumpWarning):  # one line, like errors (e.g. --resume on another device)
            typer.echo(f"featdump: warning: {printable(message)}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = featdump_warning
    try:
        summary = run_extraction(cfg, progress, on_ready=ready, stop=stop, on_repeat=leave_at_once(stop))
    finally:
        warnings.showwarning = shown
    if not cfg.quiet:
        out = console()
        out.print(summary_table(summary))
        if summary.failures:
            out.print(failures_table(summary.failures, summary.num_failed))
    bad = [layer for layer in summary.layers if layer.nonfinite]
    for layer in bad:  # not silenced by --quiet: the rows hold no usable numbers
        typer.echo(f"featdump: warning: {nonfinite_line(layer)}", err=True)
    if none := nothing_read(summary):
        raise FeatdumpError(none)
    if cfg.strict and summary.num_failed:
        raise FeatdumpError(f"{summary.num_failed} image(s) failed (--strict); see /failed in {summary.output}")
    if cfg.strict and bad:
        raise FeatdumpError(
            f"{len(bad)} layer(s) hold NaN/inf values (--strict), e.g. {nonfinite_line(bad[0])}; see {summary.output}"
        )


# --------------------------------------------------------------------------- bench


def bench_parameters() -> Signature:
    """``extract``'s parameters (``-o`` optional: where the writer is timed) plus ``--seconds`` and ``--images``."""
    import dataclasses

    table = [dataclasses.replace(o, default="") if o.name == "output" else o for o in OPTIONS]
    sig = extract_parameters(table)
    params = list(sig.parameters.values())
    keyword = Parameter.KEYWORD_ONLY
    params.insert(-1, Parameter("seconds", keyword, default=60.0, annotation=Annotated[float, typer.Option(
        "--seconds", help="About how long the four timings take in all (model loading aside).")]))
    params.insert(-1, Parameter("images", keyword, default=300, annotation=Annotated[int, typer.Option(
        "--images", help="Use at most the first N images.")]))
    return sig.replace(parameters=params)


@app.command()
@handle_errors
@with_signature(bench_parameters())
def bench(ctx: typer.Context, **values: Any) -> None:
    """Time decoding, the forward pass, the writer and the whole pipeline on your machine, images
    and model, and say which one limits the run and what to try. Writes only temporary files (in
    -o's folder, else here) and removes them.

    Example: featdump bench resnet50 photos/ --out-indices 3,4 --dtype float16 --device cuda --seconds 60
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from featdump import options as config
    from featdump.cli.render import bench_table
    from featdump.run.benchmark import bench_config, run_benchmark

    names = [o.name for o in OPTIONS]
    given = given_options(ctx, names)
    given.setdefault("output", values.get("output") or "")
    file_values = config.load_toml(values["config_file"]) if values.get("config_file") else {}
    if not given["output"]:
        given["output"] = str(Path.cwd() / "featdump-bench.h5")
    cfg = bench_config(config.resolve(given, file_values, command=shlex.join(["featdump", *sys.argv[1:]])))
    result = run_benchmark(cfg, seconds=values["seconds"], images=values["images"])
    bench_table(result)


# --------------------------------------------------------------------------- show / viz / models


@app.command()
@handle_errors
def show(
    path: Annotated[Path, typer.Argument(help="A featdump .h5 file: finished, partial, a shard or merged.")],
    failures: Annotated[int, typer.Option("--failures", help="How many failed images to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only the exit status tells.")] = False,
    layer: Annotated[Optional[str], typer.Option("--layer", help="With --row: statistics of one stored map.")] = None,
    row: Annotated[Optional[int], typer.Option("--row", help="With --layer: the file row (negative: from the end).")] = None,
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
    from featdump.cli.render import console, show_renderables
    from featdump.store.describe import summarize_file

    if (layer is None) != (row is None):
        raise UsageError("--layer and --row go together: featdump show FILE --layer NAME --row R")
    if layer is not None and row is not None:
        from featdump.cli.render import map_stats_table
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
    if info["missing_sources"]:
        gone = info["missing_sources"]
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
        Optional[list[str]], typer.Option("--image", help="Row number or stored path (repeatable). [default: first 4]")
    ] = None,
    layer: Annotated[
        Optional[list[str]], typer.Option("--layer", help="Stored layer name (repeatable). [default: all]")
    ] = None,
    root: Annotated[
        Optional[Path], typer.Option("--root", help="Folder the stored image paths are relative to.")
    ] = None,
    tile: Annotated[int, typer.Option("--tile", help="Tile width in pixels.")] = 160,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Draw each spatial layer's PCA map over the original image (/geometry).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Draw stored feature maps: per image, the input then each layer as a PCA of channels -> RGB.

    The PCA is fitted per layer across the shown images. Pooled layers are drawn as heat strips.
    Input images are read from their stored paths (relative ones are looked up under --root, the
    INPUT folders of the recorded command, the current folder and the file's folder).

    With --overlay, each spatial layer's map is painted over the whole original image, every cell
    in its box (the file's /geometry), so crops and padding line up.

    Example: featdump viz feats.h5 -o feats.png --image 0 --image cats/tom.jpg --layer layer2
    """
    if overlay:  # each cell painted into its box in the original image (FeatureFile.pixel_boxes)
        from featdump.overlay import render_overlay as render
    else:
        from featdump.viz import render

    result = render(path, output, images=image, layers=layer, tile=tile, root=root)
    if not quiet:
        typer.echo(
            f"wrote {printable(result.output)} ({result.width}x{result.height}): {len(result.rows)} image(s) × "
            f"{len(result.layers)} layer(s)"
        )
        for stored in result.missing:
            typer.echo(f"input image not found: {printable(stored)} (drawn as a placeholder; pass --root DIR)", err=True)


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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only the exit status tells.")] = False,
) -> None:
    """Re-extract random stored rows with the settings recorded in the file and compare.

    Prints per layer the largest absolute difference and the smallest cosine similarity. Exit 0
    within the tolerance of the file's precision and dtype (README, "Verify"), 1 outside it (rows
    named), 2 when it cannot check (weights, checkpoint sha256, inputs, processor or timm version).

    Example: featdump verify feats.h5 -n 16 --seed 1
    """
    import dataclasses

    from featdump.cli.render import console, verify_table
    from featdump.run.verify import verify_file

    report = verify_file(path, n=n, seed=seed, device=device)
    if as_json:
        data = dataclasses.asdict(report)
        data["ok"] = report.ok
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif not quiet:
        console().print(verify_table(report))
    if not report.ok:
        named = ", ".join(f"{r} ({report.paths[report.rows.index(r)]})" for r in report.bad_rows[:5])
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
    import dataclasses

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
    shards: Annotated[list[Path], typer.Argument(help="Shard files of one run, all N of them (any order).")],
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
    state = "complete" if summary.complete else "NOT complete (--allow-partial)"
    how = (
        "self-contained copy"
        if summary.mode == "copy"
        else "virtual: reads the shard files, found relative to it; keep them next to each other"
    )
    typer.echo(
        f"wrote {printable(summary.output)}: {summary.num_images} images, {summary.num_failed} failed, of {summary.num_inputs} "
        f"from {summary.num_shards} shards · {state} · {how}"
    )
    for name in summary.skipped:
        typer.echo(f"skipped {printable(name)}: no rows")
    for name in summary.partial:
        typer.echo(f"unfinished shard merged as far as it goes: {printable(name)}", err=True)


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
            typer.echo(f"featdump: error: {printable(exc)}", err=True)
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
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write (new or empty, unless --overwrite).")],
    layer: Annotated[
        Optional[list[str]], typer.Option("--layer", help="Stored layer name (repeatable). [default: all]")
    ] = None,
    pool: Annotated[
        Optional[str], typer.Option("--pool", help="avg|max over H×W (token layers: the patch tokens); map layers need it.")
    ] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float16|float32 [the stored dtype].")] = None,
    rows_per_part: Annotated[int, typer.Option("--rows-per-part", help="Rows per .npy/.parquet part.")] = 100_000,
    fmt: Annotated[str, typer.Option("--format", help="npy (embedding-reader layout) or safetensors (up to 2 GiB).")] = "npy",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a folder that is not empty.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Write pooled vectors for other tools: DIR/<layer>/emb/part-00000.npy + DIR/<layer>/metadata/part-00000.parquet.

    Rows in file order, parts of at most --rows-per-part rows; the parquet parts hold row, path (and
    id). embedding-reader reads it with file_format="parquet_npy"; autofaiss and faiss index it.
    --format safetensors writes DIR/features.safetensors, one tensor per layer.

    Example: featdump export feats.h5 -o emb/ --layer layer4 --pool avg --dtype float16
    """
    from dataclasses import asdict

    from featdump.store.export import export_file

    summary = export_file(
        path, output, layers=layer, pool=pool, dtype=dtype, rows_per_part=rows_per_part, fmt=fmt, overwrite=overwrite
    )
    if as_json:
        sys.stdout.write(json.dumps(asdict(summary), indent=2) + "\n")
        return
    if quiet:
        return
    what = ", ".join(
        f"{l.name} ({'×'.join(str(s) for s in l.shape)} {l.dtype}{', ' + str(pool) + '-pooled' if l.pooled_here else ''})"
        for l in summary.layers
    )
    parts = "features.safetensors" if summary.format == "safetensors" else f"{summary.parts} part(s) per layer"
    size = f"{summary.bytes / 1e6:.1f} MB" if summary.bytes >= 1e5 else f"{summary.bytes / 1e3:.1f} kB"
    typer.echo(f"wrote {summary.output}: {summary.rows} rows of {what} · {parts} · {size}")


def run(start: Any = None) -> None:
    """Run the app as the process's own command line (``featdump.cli.main``); ``start`` is the
    signal watch begun before the imports (featdump/cli/signals.py)."""
    _STATE["own_process"] = True  # the console script / python -m featdump (not an embedding caller)
    _STATE["start"] = start
    app()
