"""Tools around the pipeline: search the vector index, audit a model, prune Dagster's compute logs, say where things are."""

from __future__ import annotations

import json
from pathlib import Path

import click

from erasure_pipeline.app.cli.common import Fail, guard, ledger, main, settings


@main.command()
@click.argument("text")
@click.option("--limit", type=click.IntRange(1, 100), default=5, show_default=True)
@guard
def search(text: str, limit: int) -> None:
    """Top text chunks for TEXT across every shard (score, shard, dataset.column, record id; no subject ids)."""
    # Deferred: the embedder imports scikit-learn; the vector store, Qdrant; the declaration, pydantic.
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.ml.embed import embedder_for
    from erasure_pipeline.stores.factory import vector_store

    s = settings()
    policy = load_policy(settings=s)
    if not policy.text_datasets:
        raise Fail("no dataset declares text columns (datasets.<name>.text): there is no vector index to search")
    from erasure_pipeline.kinds.environment import key_ring
    from erasure_pipeline.kinds.vectors import open_payload

    store = vector_store(s.qdrant_url, s.qdrant_api_key, s.qdrant_path)
    keys = key_ring(ledger(), s) if any(d.sealed for d in policy.datasets.values()) else None
    hits = store.search(embedder_for(policy)([text], policy.vectors.dimensions)[0], list(range(policy.shards)), limit=limit)
    if not hits:
        click.echo("no hits (has vector_index been materialised?)")
    click.echo(f"{'score':>7}  {'shard':<9} record")
    for score, sealed in hits:
        payload = open_payload(sealed, keys)
        click.echo(f"{score:7.4f}  shard_{payload.get('shard', 0):02d}  {payload.get('dataset')}.{payload.get('column')} "
                   f"{payload.get('record_id')}")


def _members_and_references(lake, training: str, partitions, sample: int, seed: int):
    import pandas as pd

    from erasure_pipeline.ml import features as ft
    from erasure_pipeline.stores import lake as lk

    tables = [lk.read_table(lake, training, p) for p in partitions]
    if any(t is None for t in tables):
        raise Fail(f"{training} is not materialised: run `erasure-pipeline materialize`")
    rows = pd.concat(tables, ignore_index=True)
    holdout = rows[ft.HOLDOUT].astype(bool)
    members, references = rows[~holdout], rows[holdout]
    keys = members[ft.KEY].drop_duplicates()
    chosen = keys.sample(n=min(sample, len(keys)), random_state=seed)
    return members[members[ft.KEY].isin(chosen)], references


@main.command()
@click.option("--sample", type=click.IntRange(min=10), default=1000, show_default=True,
              help="How many training subjects to attack (a random sample of the current members).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--model", "model_name", default=None, help="Which declared model (default: the first).")
@click.option("--json", "as_json", is_flag=True)
@guard
def audit(sample: int, seed: int, model_name: str | None, as_json: bool) -> None:
    """Membership-inference audit of a model's current ensemble: members vs never-seen (holdout) subjects."""
    # Deferred: the attack reads training sets with pandas and scores with scikit-learn.
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.kinds.models import ensemble_name
    from erasure_pipeline.kinds.training import node_name
    from erasure_pipeline.ml.audit import audit_rows
    from erasure_pipeline.stores import lake as lk
    from erasure_pipeline.stores.factory import lake_at

    s = settings()
    policy = load_policy(settings=s)
    model_name = model_name or next(iter(policy.models))
    if model_name not in policy.models:
        raise Fail(f"no model '{model_name}' is declared (models: {', '.join(policy.models)})")
    store = lake_at(s.lake)
    blob = store.read_bytes(lk.model_name(ensemble_name(model_name)))
    if blob is None:
        raise Fail(f"no published {ensemble_name(model_name)}: run `erasure-pipeline materialize` (a model below the policy's "
                   "quality floor is kept as a candidate, not published)")
    saved = lk.loads_model(blob)
    members, references = _members_and_references(store, node_name(model_name), policy.partitions, sample, seed)
    result = audit_rows(saved["model"], saved["features"], members, references)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"attack: {result.attack}")
    click.echo("| targets (members) | references (never seen) | ROC-AUC | 95 % interval | TPR @ 0.1 % FPR | TPR @ 1 % FPR |")
    click.echo("|---|---|---|---|---|---|")
    click.echo(f"| {result.targets} | {result.references} | {result.auc:.3f} | {result.auc_low:.3f}-{result.auc_high:.3f} "
               f"| {result.tpr_at_0_1pct_fpr:.3f} | {result.tpr_at_1pct_fpr:.3f} |")


def _model_rows(policy, store) -> list[dict]:
    from erasure_pipeline.kinds.models import CANDIDATE, ensemble_name
    from erasure_pipeline.stores import lake as lk

    rows = []
    for name, spec in policy.models.items():
        node = ensemble_name(name)
        blob = store.read_bytes(lk.model_name(node, CANDIDATE))
        saved = lk.loads_model(blob) if blob else {}
        metrics, baseline = saved.get("metrics", {}), saved.get("baseline") or {}
        value, unsharded = metrics.get(f"holdout_{spec.metric}"), baseline.get(f"holdout_{spec.metric}")
        rows.append({
            "model": name, "task": spec.task, "estimator": spec.estimator, "metric": spec.metric,
            "ensemble": value, "unsharded": unsharded,
            "sharding_cost": unsharded - value if value is not None and unsharded is not None else None,
            "unsharded_measured": baseline.get("measured"), "floor": spec.quality.min if spec.quality else None,
            "holdout_rows": metrics.get("holdout_rows"),
            "holdout_classes": {_class_name(saved, k.removeprefix("holdout_class_")): v for k, v in metrics.items()
                                if k.startswith("holdout_class_")},
            "published": store.read_bytes(lk.model_name(node)) is not None, "built": blob is not None,
        })
    return rows


def _class_name(saved: dict, index: str) -> str:
    """A class by its declared name (multiclass), else its index (binary 0/1)."""
    names = saved.get("classes")
    return str(names[int(index)]) if names and index.isdigit() and int(index) < len(names) else index


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


@main.command()
@click.option("--json", "as_json", is_flag=True)
@guard
def models(as_json: bool) -> None:
    """How good each declared model is: its holdout metric beside one unsharded model on the same split (what
    sharding costs), the holdout's class counts, the floor, whether it is published; and the estimator short names."""
    from erasure_pipeline.core.declaration import ESTIMATORS
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.stores.factory import lake_at

    s = settings()
    policy = load_policy(settings=s)
    rows = _model_rows(policy, lake_at(s.lake))
    if as_json:
        click.echo(json.dumps({"models": rows, "estimators": ESTIMATORS}, indent=2))
        return
    if not rows:
        click.echo("no model is declared (models: in the policy file)")
    else:
        click.echo("| model | task | estimator | holdout metric | SISA ensemble | one unsharded model | sharding cost "
                   "| floor | holdout rows (per class) | published |")
        click.echo("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["built"]:
            click.echo(f"| {r['model']} | {r['task']} | {r['estimator']} | {r['metric']} | not built yet (erasure-pipeline "
                       "materialize) | | | | | |")
            continue
        classes = ", ".join(f"{c}: {n}" for c, n in r["holdout_classes"].items())
        click.echo(f"| {r['model']} | {r['task']} | {r['estimator']} | {r['metric']} | {_num(r['ensemble'])} | {_num(r['unsharded'])} "
                   f"| {_num(r['sharding_cost'])} | {_num(r['floor'])} | {r['holdout_rows']}{f' ({classes})' if classes else ''} "
                   f"| {'yes' if r['published'] else 'no'} |")
    if any(r["built"] and r["unsharded_measured"] for r in rows):
        click.echo("the unsharded model is measured by materialize, cycle and backfill runs (an erasure carries it over)")
    click.echo("estimator short names (models.<name>.estimator; or an import path to any scikit-learn estimator class):")
    for name, what in ESTIMATORS.items():
        click.echo(f"  {name:<34} {what}")


@main.command()
@click.option("--compute-log-days", type=click.FloatRange(min=0), default=None,
              help="Delete compute logs (step stdout/stderr) last written more than this many days ago.")
@click.option("--lake", "lake", is_flag=True,
              help="Remove bucket files no partition manifest lists (left by a crash, or restored from a backup).")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@guard
def housekeeping(compute_log_days: float | None, lake: bool, dry_run: bool) -> None:
    """Prune Dagster's local compute logs, which have no retention setting of their own; sweep the lake for
    objects outside every manifest."""
    if compute_log_days is None and not lake:
        raise Fail("housekeeping takes --compute-log-days N, --lake, or both")
    if compute_log_days is not None:
        from erasure_pipeline.app.housekeeping import prune_compute_logs
        from erasure_pipeline.app.runner import get_instance  # deferred: Dagster

        with get_instance() as instance:
            base_dir = getattr(instance.compute_log_manager, "_base_dir", None)
        if base_dir is None:
            raise Fail(f"the instance's compute log manager ({type(instance.compute_log_manager).__name__}) is not on the local filesystem")
        pruned = prune_compute_logs(Path(base_dir), compute_log_days, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {pruned.files} compute-log files ({pruned.bytes / 1e6:.1f} MB) older than {compute_log_days:g} days under {base_dir}")
    if lake:
        from erasure_pipeline.app.housekeeping import sweep_unlisted
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.kinds.environment import open_env

        s = settings()
        found = sweep_unlisted(open_env(load_policy(settings=s), s), dry_run=dry_run)
        click.echo(f"{'would remove' if dry_run else 'removed'} {len(found)} bucket files outside their partition's manifest"
                   + (": " + ", ".join(found[:10]) + (" …" if len(found) > 10 else "") if found else ""))


@main.command()
@guard
def where() -> None:
    """Print the project home and where each store lives (secrets only as set or not)."""
    from erasure_pipeline.core.settings import policy_path

    s = settings()
    vectors = f"qdrant server ({'$ERASURE_PIPELINE_QDRANT_URL'})" if s.qdrant_url else f"qdrant edge {s.qdrant_path}"
    ledger_at = "set ($ERASURE_PIPELINE_LEDGER_URL)" if s.ledger_url else s.ledger
    click.echo(json.dumps({
        "project_home": str(s.home), "policy": str(policy_path(s)[0] or "none found"), "lake": s.lake, "landing": s.landing,
        "evidence": s.evidence, "ledger": ledger_at,
        "vectors": vectors, "dagster_home": str(s.instance_dir), "executor": s.executor or "in_process",
        "pepper": "set ($ERASURE_PIPELINE_PEPPER)" if s.pepper else f"local file {s.home / 'pepper.key'}",
        "signing_key": "set ($ERASURE_PIPELINE_SIGNING_KEY)" if s.signing_key else f"local file {s.home / 'signing.key'}",
        "kms": s.kms_url + ("" if s.kms else " (the default: beside the home, never inside it)"),
    }, indent=2))
