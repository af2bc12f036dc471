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
from featdump.errors import FeatdumpError, Interrupted, UsageError
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
        str, typer.Option("--tokens", help="Token outputs as seq (N,T,D) or map (N,D,H,W, prefix tokens dropped).")
    ] = "seq",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
) -> None:
    """List a backbone's feature layers: module, channels, stride, shape and MB per image.

    Builds the model on the meta device: no weights, no downloads.

    Example: featdump inspect resnet50 --out-indices 1,2,3 --img-size 256x320

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
    desc = describe(model, indices, stride, config.parse_img_size(img_size), layers=names, tokens=tokens)
    if as_json:
        sys.stdout.write(json.dumps(description_dict(desc, pool), indent=2) + "\n")
        return
    console().print(inspect_table(desc, pool))


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
    from featdump.cli.render import RichProgress, console, failures_table, nonfinite_line, summary_table
    from featdump.run.job import run_extraction
    from featdump.run.results import nothing_read

    given = given_options(ctx, [o.name for o in OPTIONS])  # MODEL, INPUT... and -o are always given
    file_values = config.load_toml(config_file) if config_file else {}
    cfg = config.resolve(given, file_values, command=shlex.join(["featdump", *sys.argv[1:]]))
    progress = RichProgress(enabled=False if cfg.quiet else None)
    if cfg.quiet:  # third-party RuntimeWarnings (numpy/torch on NaN values): what they mean is said below
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    summary = run_extraction(cfg, progress, stop=stop, on_repeat=leave_at_once(stop))
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


# --------------------------------------------------------------------------- show / viz / models


@app.command()
@handle_errors
def show(
    path: Annotated[Path, typer.Argument(help="A featdump .h5 file: finished, partial, a shard or merged.")],
    failures: Annotated[int, typer.Option("--failures", help="How many failed images to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only the exit status tells.")] = False,
) -> None:
    """Summary of a featdump file: datasets (shape, dtype, chunks, compression, MB on disk), provenance, failures.

    Merged files are checked for missing virtual source files (exit 1 when any is missing).
    Other HDF5 files and non-HDF5 files exit 2.

    Example: featdump show feats.h5 --json
    """
    from featdump.cli.render import console, show_renderables
    from featdump.store.describe import summarize_file

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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Draw stored feature maps: per image, the input then each layer as a PCA of channels -> RGB.

    The PCA is fitted per layer across the shown images. Pooled layers are drawn as heat strips.
    Input images are read from their stored paths (relative ones are looked up under --root, the
    INPUT folders of the recorded command, the current folder and the file's folder).

    Example: featdump viz feats.h5 -o feats.png --image 0 --image cats/tom.jpg --layer layer2
    """
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
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if quiet:
        for r in rows:
            typer.echo(r["name"])
        return
    if not rows:
        typer.echo(f"no timm model matches {pattern!r}; patterns are globs, e.g. '{pattern}*' or '*{pattern}*'", err=True)
        return
    console().print(models_table(rows, pattern))


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


def run(start: Any = None) -> None:
    """Run the app as the process's own command line (``featdump.cli.main``); ``start`` is the
    signal watch begun before the imports (featdump/cli/signals.py)."""
    _STATE["own_process"] = True  # the console script / python -m featdump (not an embedding caller)
    _STATE["start"] = start
    app()
