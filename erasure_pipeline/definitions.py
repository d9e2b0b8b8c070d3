"""The code location Dagster loads (``dagster dev``, ``dg dev``, the gRPC code server): the ``defs/`` folder.

In a source checkout ``dg`` finds the project by its ``pyproject.toml`` and loads every module of
``erasure_pipeline/defs`` (``defs/pipeline.py`` builds the pipeline from the declaration). An installed
package without its project file (a wheel) loads the same function directly.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from erasure_pipeline.defs import pipeline as built  # the module: one @dg.definitions per module, this file's own

PROJECT = Path(__file__).resolve().parent.parent


@dg.definitions
def defs() -> dg.Definitions:
    if (PROJECT / "pyproject.toml").is_file():
        return dg.load_from_defs_folder(path_within_project=PROJECT)
    return built.pipeline()
