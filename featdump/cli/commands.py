"""Commands that run a model: ``inspect``, ``extract`` and ``bench`` (the Typer app: featdump/cli/typer_app.py).

Nothing here imports torch at module level, so ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from inspect import Parameter, Signature
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from featdump import configure
from featdump.cli.typer_app import STATE, F, app, given_options, handle_errors
from featdump.cli.typer_compat import join_paragraph_lines
from featdump.errors import FeatdumpWarning, UsageError
from featdump.options import OPTIONS, Option
from featdump.text import LINE_CHARS, clip, printable


def extract_parameters(
    table: Sequence[Option] = OPTIONS, own: Sequence[tuple[str, Any, Any, Any]] = (), config: bool = True
) -> Signature:
    """A command's parameters: the options of ``table`` (derived from featdump/options.py), then its
    ``own`` (name, type, default, Typer info), then ``--config``."""
    keyword = Parameter.KEYWORD_ONLY  # Typer passes every parameter by name
    params = [Parameter("ctx", keyword, annotation=typer.Context)]
    for o in table:
        shown = "[default:" not in o.help  # a help that names its default: no second one from Typer
        info = typer.Argument(help=o.help) if o.argument else typer.Option(*o.flags, help=o.help, show_default=shown)
        default = Parameter.empty if o.required else o.default
        params.append(Parameter(o.name, keyword, annotation=Annotated[o.cli_type, info], default=default))
    if config:
        info = typer.Option("--config", help="TOML file of option defaults (flags win).")
        own = [*own, ("config_file", Optional[Path], None, info)]
    for name, tp, default, info in own:
        params.append(Parameter(name, keyword, annotation=Annotated[tp, info], default=default))
    return Signature(params, return_annotation=None)


def with_signature(signature: Signature) -> Callable[[F], F]:
    """Give a ``**values`` function the parameters Typer should read (set before other decorators wrap it)."""

    def apply(func: F) -> F:
        func.__signature__ = signature  # type: ignore[attr-defined]
        return func

    return apply


# --------------------------------------------------------------------------- inspect


# extract's options that also shape what inspect shows (their flags, help and checks come from the table)
INSPECT_OPTIONS = ("out_indices", "output_stride", "img_size", "max_side", "pool", "layers", "tokens", "dtype", "process")


def inspect_parameters() -> Signature:
    """``inspect``'s parameters: MODEL, the extract options of :data:`INSPECT_OPTIONS`, and its own."""
    model = dataclasses.replace(OPTIONS[0], help="timm model name, e.g. resnet50 or convnext_tiny.fb_in22k")
    own = [
        ("all_modules", bool, False, typer.Option("--all-modules", help="List every module name (for --layers) with its output shape.")),
        ("images", Optional[int], None, typer.Option("--images", help="Disk planning: add per-layer and total sizes for N images.")),
        ("as_json", bool, False, typer.Option("--json", help="Print JSON on stdout (nothing else).")),
    ]
    return extract_parameters([model, *(o for o in OPTIONS if o.name in INSPECT_OPTIONS)], own, config=False)


@app.command()
@handle_errors
@with_signature(inspect_parameters())
def inspect(ctx: typer.Context, model: str, all_modules: bool, images: int | None, as_json: bool, **values: Any) -> None:
    """List a backbone's feature layers: module, channels, stride, shape and MiB per image.

    Builds the model on the meta device: no weights, no downloads.

    Example: featdump inspect resnet50 --out-indices 1,2,3 --img-size 256x320

    Example: featdump inspect resnet50 --images 1000000 --dtype float16 --pool avg

    Example: featdump inspect vit_small_patch16_224 --all-modules
    """
    from featdump.cli.render import EXAMPLE_IMAGE, console, description_dict, inspect_table, modules_dict, modules_table
    from featdump.model.backbone import describe

    given = given_options(ctx, list(INSPECT_OPTIONS))
    o = {**{f.name: f.default for f in OPTIONS if f.name in INSPECT_OPTIONS}, **configure.check_options(given)}
    if all_modules:
        from featdump.model.modules import list_modules

        fixed = o["img_size"] if o["img_size"] is None or not isinstance(o["img_size"][0], str) else None
        _, data, records = list_modules(model, fixed, o["output_stride"])
        if as_json:
            sys.stdout.write(json.dumps(modules_dict(model, data, records), indent=2) + "\n")
        else:
            console().print(modules_table(model, data, records))
        return
    if images is not None and images < 1:
        raise UsageError(f"--images must be a whole number >= 1, not {images}")
    pool, dtype = o["pool"], o["dtype"]
    desc = describe(model, o["out_indices"], o["output_stride"], o["img_size"], layers=o["layers"], tokens=o["tokens"], max_side=o["max_side"])
    if desc.data.size_mode:  # what one example image gives (every image gets its own shapes)
        from featdump.model.backbone import for_image

        desc = for_image(desc, *EXAMPLE_IMAGE)
    if o["process"]:
        from featdump.run import processors

        procs = processors.load(o["process"])
        desc = dataclasses.replace(desc, layers=processors.stored_layers(desc, pool, procs))
    if as_json:
        sys.stdout.write(json.dumps(description_dict(desc, pool, images, dtype), indent=2) + "\n")
        return
    console().print(inspect_table(desc, pool, images, dtype))


# --------------------------------------------------------------------------- extract


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
    from featdump.cli.signals import guarded_run, leave_at_once

    start, STATE["start"] = STATE["start"], None
    if STATE["own_process"]:  # start-up (torch, timm, the model) makes about 400,000 objects to keep and
        gc.disable()  # little garbage: no collection walks them until ready() freezes them
    with guarded_run(start) as stop:  # a Ctrl-C during start-up is remembered, not lost in third-party code
        from featdump.cli.progress import LogProgress, progress_for
        from featdump.cli.render import console, failures_table, summary_table
        from featdump.run.job import run_extraction
        from featdump.run.results import end_of_run, nonfinite_line
        from featdump.store.like import resolve_with_like

        given = given_options(ctx, [o.name for o in OPTIONS])  # MODEL, INPUT... and -o are always given
        file_values = configure.load_toml(values["config_file"]) if values["config_file"] else {}
        cfg = resolve_with_like(given, file_values, shlex.join(["featdump", *sys.argv[1:]]))
        progress = progress_for(cfg.quiet)  # a bar on a terminal, plain lines in a job's log

        def ready(backbone: Any, output: str, placement: Any) -> None:
            if STATE["own_process"]:  # start-up's garbage (a remote listing's, say) collected once, then torch's,
                gc.collect()  # timm's and the model's objects frozen: the last collection as the process ends
                gc.freeze()  # need not walk them (about 1 s); objects made later, the output file's among them,
                gc.enable()  # are collected as before
            if isinstance(progress, LogProgress):
                progress.ready(backbone, cfg.dtype, cfg.pool)

        shown = warnings.showwarning

        def featdump_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            if issubclass(category, FeatdumpWarning):  # one line, like errors (e.g. --resume on another device)
                typer.echo(f"featdump: warning: {printable(clip(str(message), LINE_CHARS))}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        with warnings.catch_warnings():  # the filters and showwarning are put back after the run
            warnings.showwarning = featdump_warning
            if cfg.quiet:  # third-party RuntimeWarnings (numpy/torch on NaN values): what they mean is said below
                warnings.filterwarnings("ignore", category=RuntimeWarning)
            if cfg.ray:
                from featdump.cli.files import merge_line
                from featdump.run.onray import run_on_ray

                gc.enable()  # no ready() on this path: the driver's own objects stay collectable
                merged = run_on_ray(cfg, progress, stop)
                if not cfg.quiet:
                    typer.echo(merge_line(merged))
                return
            summary = run_extraction(cfg, progress, on_ready=ready, stop=stop, on_repeat=leave_at_once(stop))
        if not cfg.quiet:
            out = console()
            out.print(summary_table(summary))
            if summary.failures:
                out.print(failures_table(summary.failures, summary.num_failed))
        for layer in summary.layers:  # not silenced by --quiet: the rows hold no usable numbers
            if layer.nonfinite:
                typer.echo(f"featdump: warning: {nonfinite_line(layer)}", err=True)
        end_of_run(summary, cfg.strict)


# --------------------------------------------------------------------------- bench


def bench_parameters() -> Signature:
    """``extract``'s parameters (``-o`` optional: where the writer is timed) plus ``--seconds`` and ``--images``."""
    own = [
        ("seconds", float, 60.0, typer.Option(
            "--seconds", help="About how long the four timings take in all (model loading aside).")),
        ("images", int, 300, typer.Option("--images", help="Use at most the first N images.")),
    ]
    return extract_parameters([dataclasses.replace(o, default="") if o.name == "output" else o for o in OPTIONS], own)


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
    from featdump.cli.render import bench_table
    from featdump.run.benchmark import run_benchmark

    given = given_options(ctx, [o.name for o in OPTIONS])
    given["output"] = given.get("output") or values.get("output") or str(Path.cwd() / "featdump-bench.h5")
    file_values = configure.load_toml(values["config_file"]) if values.get("config_file") else {}
    cfg = configure.resolve(given, file_values, command=shlex.join(["featdump", *sys.argv[1:]]))
    bench_table(run_benchmark(cfg, seconds=values["seconds"], images=values["images"]))


# The commands on files and the catalog register with the same app.
from featdump.cli import files  # noqa: E402, F401

join_paragraph_lines(app)  # every command is registered by now
