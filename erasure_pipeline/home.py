"""Where the project keeps its state: the project home.

The home holds the lake, the Qdrant stores, the ledger, the local pepper and, unless
``DAGSTER_HOME`` is set, the Dagster instance. Everything is resolved when asked for,
never at import time, so tests and deployments can point it elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ERASURE_PIPELINE_HOME"
DEFAULT_HOME = ".erasure_home"


def project_home() -> Path:
    """The project home: ``$ERASURE_PIPELINE_HOME`` or ``./.erasure_home``, made absolute."""
    raw = os.environ.get(HOME_ENV) or DEFAULT_HOME
    home = Path(raw).expanduser()
    if not home.is_absolute():
        home = Path.cwd() / home
    return home.resolve()


def lake_root() -> Path:
    return project_home() / "lake"


def landing_root() -> Path:
    return project_home() / "landing"


def qdrant_root() -> Path:
    return project_home() / "qdrant"


def dagster_home() -> Path:
    return project_home() / "dagster"


def ledger_path() -> Path:
    return project_home() / "ledger.sqlite"
