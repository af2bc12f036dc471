"""``featdump models``: timm model names, their pretrained tags, and whether ``--output-stride`` works.

Whether a model can dilate its late stages is decided without building it: the model's timm
entrypoint is followed (through the module's helper functions) to the model classes it builds, and
a class supports it when its ``__init__`` takes ``output_stride`` and does not pin it to 32
(timm writes ``assert output_stride == 32`` where dilation is not implemented).
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import inspect
import sys
from typing import Any

from featdump.errors import UsageError


@functools.lru_cache(maxsize=None)
def _module_functions(module_name: str) -> dict[str, ast.FunctionDef]:
    module = sys.modules[module_name]
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return {}
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


@functools.lru_cache(maxsize=None)
def _class_supports(cls: type) -> bool:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    if "output_stride" not in params:
        return False
    for klass in cls.__mro__:  # a subclass (e.g. a *Features variant) inherits its parent's limits
        init = klass.__dict__.get("__init__")
        if init is None or not klass.__module__.startswith("timm."):
            continue
        try:
            source = inspect.getsource(init)
        except (OSError, TypeError):
            continue
        if "output_stride==32" in source.replace(" ", ""):
            return False
    return True


def _model_classes(module_name: str, func_name: str) -> set[type]:
    """nn.Module classes named anywhere in the entrypoint or the module functions it calls."""
    import torch

    module = sys.modules[module_name]
    funcs = _module_functions(module_name)
    seen: set[str] = set()
    found: set[type] = set()
    todo = [func_name]
    while todo:
        name = todo.pop()
        if name in seen or name not in funcs:
            continue
        seen.add(name)
        for node in ast.walk(funcs[name]):
            if isinstance(node, ast.Name):
                if node.id in funcs:
                    todo.append(node.id)
                    continue
                obj = getattr(module, node.id, None)
                if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
                    found.add(obj)
    return found


def supports_output_stride(name: str) -> bool:
    """True when ``--output-stride 8|16`` works for the model (decided from source, nothing built)."""
    from timm.models import _registry

    arch = name.split(".", 1)[0]
    try:
        fn = _registry.model_entrypoint(arch)
    except (RuntimeError, KeyError):
        return False
    return any(_class_supports(cls) for cls in _model_classes(fn.__module__, fn.__name__))


def list_models(pattern: str = "*", pretrained: bool = False) -> list[dict[str, Any]]:
    """Model names matching a glob (case-insensitive), each with its pretrained tags and output-stride support."""
    import timm

    pattern = pattern or "*"
    names = timm.list_models(pattern)
    tags: dict[str, list[str]] = {}
    for full in timm.list_pretrained():
        arch, _, tag = full.partition(".")
        tags.setdefault(arch, []).append(tag or "default")
    # a pattern with a tag (resnet50.a1*) matches pretrained names
    if "." in pattern:
        arches = {n.split(".", 1)[0] for n in timm.list_pretrained(pattern)}
        names = sorted(set(names) | arches)
    rows = []
    for name in names:
        have = tags.get(name, [])
        if pretrained and not have:
            continue
        rows.append({"name": name, "pretrained_tags": have, "output_stride": supports_output_stride(name)})
    return rows


def check_pattern(pattern: str) -> str:
    if "/" in pattern or "\\" in pattern:
        raise UsageError(f"PATTERN is a glob over timm model names (e.g. 'resnet*'), not a path: {pattern!r}")
    try:
        fnmatch.translate(pattern)
    except Exception:  # noqa: BLE001  # pragma: no cover - translate accepts anything
        raise UsageError(f"bad glob pattern {pattern!r}") from None
    return pattern
