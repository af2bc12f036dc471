"""``featdump models``: timm model names, their pretrained tags, and whether ``--output-stride`` works.

Dilation is decided without building the model: a class the entrypoint builds supports it when its
``__init__`` takes ``output_stride`` and does not ``assert output_stride == 32``. Checked against
building every model of timm 1.0.31 at ``--output-stride 16``: it agrees for all 1371 names.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import sys
import textwrap
from typing import Any, TypeGuard

from featdump.errors import UsageError


@functools.cache
def _class_supports(cls: type) -> bool:
    try:
        params = inspect.signature(getattr(cls, "__init__")).parameters  # noqa: B009 - the class's, for mypy
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


@functools.cache
def _entrypoints() -> frozenset[Any]:
    from timm.models import list_models, model_entrypoint

    return frozenset(model_entrypoint(name) for name in list_models())


@functools.cache
def _function_facts(mod_name: str, name: str) -> tuple[frozenset[type], frozenset[type], tuple[tuple[str, str], ...]]:
    """One module-level function's (classes given to build_model_with_cfg, classes mentioned,
    functions it calls), from its parsed source (only the function: parsing whole modules is slow)."""
    import torch

    def is_module_class(obj: Any) -> TypeGuard[type]:
        return isinstance(obj, type) and issubclass(obj, torch.nn.Module)

    module = sys.modules.get(mod_name)
    func = getattr(module, name, None) if module is not None else None
    body: list[ast.stmt] = []
    if inspect.isfunction(func) and func.__module__ == mod_name:
        with contextlib.suppress(OSError, TypeError, SyntaxError):
            body = ast.parse(textwrap.dedent(inspect.getsource(func))).body
    if not body or not isinstance(body[0], ast.FunctionDef):
        return frozenset(), frozenset(), ()
    nodes = list(ast.walk(body[0]))
    assigned: dict[str, set[type]] = {}
    for node in nodes:  # variables holding classes: model_cls = EfficientNet
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
            obj = getattr(module, node.value.id, None)
            if is_module_class(obj):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, set()).add(obj)
    built: set[type] = set()
    mentioned: set[type] = set()
    calls: list[tuple[str, str]] = []
    for node in nodes:
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "build_model_with_cfg"
        ):
            args = list(node.args[:1]) + [k.value for k in node.keywords if k.arg == "model_cls"]
            for arg in args:
                if isinstance(arg, ast.Name):
                    obj = getattr(module, arg.id, None)
                    if is_module_class(obj):
                        built.add(obj)
                    built.update(assigned.get(arg.id, set()))
        if isinstance(node, ast.Name):
            obj = getattr(module, node.id, None)
            if inspect.isfunction(obj) and obj.__module__ == mod_name:  # a helper of the same module
                calls.append((mod_name, node.id))
            elif is_module_class(obj):
                mentioned.add(obj)
            elif (
                inspect.isfunction(obj)
                and str(getattr(obj, "__module__", "")).startswith("timm.models.")
                and not str(obj.__module__).startswith("timm.models._")
                and obj not in _entrypoints()
            ):
                calls.append((obj.__module__, obj.__name__))  # a helper imported from another timm module
    return frozenset(built), frozenset(mentioned), tuple(dict.fromkeys(calls))


def _model_classes(module_name: str, func_name: str) -> frozenset[type]:
    """The nn.Module classes the entrypoint builds as *the model*: those handed to
    ``build_model_with_cfg`` through any helper it calls (also from other timm modules); classes merely
    instantiated on the way (a hybrid ViT's ResNet, blocks) count only when no such call is found.
    Registered models used as backbones and ``timm.models._*`` are not followed."""
    seen: set[tuple[str, str]] = set()
    built: set[type] = set()
    mentioned: set[type] = set()
    todo = [(module_name, func_name)]
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        b, m, calls = _function_facts(*key)
        built |= b
        mentioned |= m
        todo.extend(calls)
    return frozenset(built or mentioned)


def supports_output_stride(name: str) -> bool:
    """True when ``--output-stride 8|16`` works for the model (decided from source, nothing built)."""
    from timm.models import model_entrypoint

    arch = name.split(".", 1)[0]
    try:
        fn = model_entrypoint(arch)
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
    return [
        {"name": name, "pretrained_tags": tags.get(name, []), "output_stride": supports_output_stride(name)}
        for name in names
        if tags.get(name) or not pretrained
    ]


def check_pattern(pattern: str) -> str:
    if "/" in pattern or "\\" in pattern:
        raise UsageError(f"PATTERN is a glob over timm model names (e.g. 'resnet*'), not a path: {pattern!r}")
    return pattern
