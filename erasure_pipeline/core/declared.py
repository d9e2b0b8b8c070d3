"""Code a declaration names by import path: an estimator class, a feature function, an embedder.

``package.module:name`` or ``package.module.name``. Besides installed packages, the policy file's folder
and the working directory are searched, so a team keeps its feature code beside its policy. They are
on ``sys.path`` only while the named module is imported (importing the code location changes nothing).
Errors name the declaration's field and never run anything but the import.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from erasure_pipeline.core.policy import PolicyError


@contextlib.contextmanager
def _searching(folders: Iterable[Path]) -> Iterator[None]:
    added = [p for p in dict.fromkeys([*(str(Path(f).resolve()) for f in folders), str(Path.cwd())]) if p not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def load(path: str, field: str, folders: Iterable[Path] = ()) -> Any:
    """The object ``path`` names; a :class:`PolicyError` naming ``field`` if it cannot be imported.
    ``folders``: where to look besides installed packages (``Policy.code_dirs``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise PolicyError(f"field '{field}': '{path}' is not an import path (package.module:name)")
    try:
        with _searching(folders):
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
