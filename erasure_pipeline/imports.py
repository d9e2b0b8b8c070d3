"""Code a declaration names by import path: an estimator class, a feature function, an embedder.

``package.module:name`` or ``package.module.name``. The policy file's folder and the working
directory are importable, so a team keeps its feature code beside its policy. Errors name the
declaration's field and never run anything but the import.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from erasure_pipeline.policy import PolicyError

_SEARCH: list[str] = []


def add_search_path(folder: Path) -> None:
    """Make modules in ``folder`` importable by the declaration (the policy file's folder)."""
    path = str(folder.resolve())
    if path not in sys.path:
        sys.path.append(path)
        _SEARCH.append(path)


def load(path: str, field: str) -> Any:
    """The object ``path`` names; a :class:`PolicyError` naming ``field`` if it cannot be imported."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise PolicyError(f"field '{field}': '{path}' is not an import path (package.module:name)")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 (the user's module: any import error is theirs to fix)
        raise PolicyError(f"field '{field}': cannot import module '{module_name}' ({type(exc).__name__}: {exc})") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise PolicyError(f"field '{field}': module '{module_name}' has no '{attr}'") from None
    return obj


def check_declared(policy) -> None:
    """Import every piece of code the declaration names and build each model's estimator once, so a
    wrong path or params fail when the code location loads, as one line naming the field."""
    from erasure_pipeline.ml.estimators import build_estimator

    for i, fn in enumerate(policy.features.functions):
        if not callable(load(fn.function, f"features.functions.{i}.function")):
            raise PolicyError(f"field 'features.functions.{i}.function': {fn.function} is not callable")
    if policy.embedder.function and not callable(load(policy.embedder.function, "embedder.function")):
        raise PolicyError(f"field 'embedder.function': {policy.embedder.function} is not callable")
    for name, model in policy.models.items():
        build_estimator(model, name)
