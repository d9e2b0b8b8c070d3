"""Running the asset graph from Python and the CLI: the instance, and shard-by-shard materialisation."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from erasure_pipeline import home, identity
from erasure_pipeline.assets.common import MERGE_ASSETS, SHARD_ASSETS

INSTANCE_TEMPLATE = Path(__file__).with_name("instance.yaml")


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME`` if set, else ``<project home>/dagster`` (created with the project's instance config)."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    path = home.dagster_home()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_TEMPLATE.read_text())
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def get_instance() -> dg.DagsterInstance:
    ensure_dagster_home()
    return dg.DagsterInstance.get()


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _assets_and_checks(defs: dg.Definitions) -> list:
    return [*defs.assets, *(defs.asset_checks or [])]


def materialize_partition(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partition: str | None,
    asset_names: Sequence[str],
    *,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """One run that materialises ``asset_names`` (and their checks) for one shard, or unpartitioned."""
    return dg.materialize(
        _assets_and_checks(defs),
        selection=dg.AssetSelection.assets(*asset_names),
        partition_key=partition,
        instance=instance,
        resources=defs.resources,
        run_config={**QUIET, **(run_config or {})},
        tags=tags or {},
        raise_on_error=False,
    )


def materialize_all(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    n_shards: int,
    *,
    progress: Callable[[str], None] = lambda _msg: None,
    shards: Sequence[int] | None = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
) -> list[dg.ExecuteInProcessResult]:
    """Every shard's partitions (one run per shard), then the unpartitioned merges (one run)."""
    results = []
    todo = list(range(n_shards)) if shards is None else list(shards)
    if shards is None:  # every landing file present now is taken: the next cycle starts after them
        _record_full_ingest(n_shards)
    for i, shard in enumerate(todo, 1):
        p = identity.partition_key(shard)
        res = materialize_partition(defs, instance, p, SHARD_ASSETS, run_config=run_config, tags=tags)
        results.append(res)
        progress(f"[{i}/{len(todo) + 1}] {p}: {'ok' if res.success else 'FAILED'} (run {res.run_id[:8]})")
        if not res.success:
            raise RuntimeError(f"materialising {p} failed; see run {res.run_id} in the Dagster UI")
    res = materialize_partition(defs, instance, None, [*MERGE_ASSETS, "erasure_certificates"], tags=tags)
    results.append(res)
    progress(f"[{len(todo) + 1}/{len(todo) + 1}] merges ({', '.join(MERGE_ASSETS)}): {'ok' if res.success else 'FAILED'} (run {res.run_id[:8]})")
    if not res.success:
        raise RuntimeError(f"materialising the merges failed; see run {res.run_id} in the Dagster UI")
    return results


def _record_full_ingest(n_shards: int) -> None:
    import secrets

    from erasure_pipeline import settings
    from erasure_pipeline.cycle import record_full_ingest
    from erasure_pipeline.erasure.service import default_ledger
    from erasure_pipeline.policy import load_policy

    policy = load_policy()
    if policy.shards == n_shards:
        record_full_ingest(default_ledger(), settings.landing(), policy, "full-" + secrets.token_hex(8))
