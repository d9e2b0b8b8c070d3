"""Retention of Dagster's own local data (compute logs), and a sweep of the lake for objects outside every manifest.

Compute logs stay on the run worker's filesystem even with Postgres storage, and Dagster has
no retention setting for them. They carry no subject ids (tested after every erasure), but
they grow with every run, so ``erasure-pipeline housekeeping --compute-log-days N`` prunes them
(from cron, or a Kubernetes CronJob next to the daemon). No Dagster import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from erasure_pipeline.kinds.base import Env


@dataclass(frozen=True)
class Pruned:
    files: int
    bytes: int
    directories: int


def prune_compute_logs(base_dir: Path, older_than_days: float, *, now: float | None = None, dry_run: bool = False) -> Pruned:
    """Delete compute-log files last written more than ``older_than_days`` ago, then empty directories."""
    if older_than_days < 0:
        raise ValueError("older_than_days must be >= 0")
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        return Pruned(0, 0, 0)
    cutoff = (time.time() if now is None else now) - older_than_days * 86_400
    files = size = 0
    for path in sorted(base_dir.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
            files += 1
            size += path.stat().st_size
            if not dry_run:
                path.unlink()
    dirs = 0
    if not dry_run:
        for path in sorted((p for p in base_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(path.iterdir()):
                path.rmdir()
                dirs += 1
    return Pruned(files, size, dirs)


def sweep_unlisted(env: Env, *, dry_run: bool = False) -> list[str]:
    """Every bucket file of every subject-level partition that its manifest does not list, removed (with its old
    versions) unless ``dry_run``: a backup restored into the lake, or a crash's leftover."""
    from erasure_pipeline.stores import buckets as bk

    found = []
    for node in (n for n in env.graph.nodes if n.partitioned and n.table is not None):
        for partition in env.graph.partitions:
            found += (bk.unlisted if dry_run else bk.remove_unlisted)(env.lake, node.name, partition)
    return found

