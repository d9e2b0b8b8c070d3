"""The asset graph, made from the graph table: one asset per node, plus the certificates.

Each asset's body is the node's computation (``kinds.base.compute_node``), the same function the jobs
run, so materialising a partition by hand in the UI and a job's shard step write the same thing. Shard
nodes are partitioned by ``shard_00`` … and depend on the same partition of their parents; merges are
unpartitioned and read every shard. Every asset writes a store, so every asset step writes in one of the
project's pools: a shard partition in its shard's, a merge in the merges', a lookup table in the claims'.
One step may compute many partitions (a backfill is one run), taking each shard's pool in turn.

``erasure_certificates`` is an external asset: it shows in the lineage (below the graph's leaves), and only
erasure runs report its materialisations (there is no "Materialize" button that could replace a certificate),
each with the batch's certificates as typed tables and links to their JSON and Markdown in the evidence store. Its check
``requests_on_time`` lists requests past or near their due date and any stuck in a non-final state.
"""


import contextlib
import datetime as dt
import hashlib
import time

import dagster as dg

from erasure_pipeline.core import names
from erasure_pipeline.core.graph import Graph, Node
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.defs import events, runtime
from erasure_pipeline.defs.resources import PipelineResource
from erasure_pipeline.kinds.base import NodeRun, compute_node


def shard_partitions(graph: Graph) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(graph.partitions))


def _node_asset(node: Node, policy: Policy, graph: Graph, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    # A multi-asset of one asset so that a step may compute several partitions and report each one's checks
    # (``can_subset``: a check of a partition it did not compute is not expected): a backfill of every shard
    # partition, launched from the UI or ``dagster asset backfill``, is one run (``BackfillPolicy.single_run``).
    spec = dg.AssetSpec(
        node.name, group_name=node.group, partitions_def=partitions if node.partitioned else None, deps=list(node.parents),
        code_version=graph.code_version(policy, node.name), kinds=set(node.kinds), description=node.description,
        owners=policy.owners)

    @dg.multi_asset(
        name=node.name,
        specs=[spec],
        check_specs=[dg.AssetCheckSpec(c.name, asset=node.name, blocking=c.blocking, description=c.description) for c in node.checks],
        can_subset=True,
        backfill_policy=dg.BackfillPolicy.single_run() if node.partitioned else None,
        # Shard partitions take their shard's pool one at a time inside the step (``runtime.pool_slot``);
        # a merge runs in the merges' pool, a lookup table in the claims' (it is built from landing).
        pool=None if node.partitioned else (names.LANDING_POOL if node in graph.prepare_nodes else names.MERGE_POOL),
    )
    def _asset(context: dg.AssetExecutionContext, pipeline: PipelineResource):
        runtime.require_pools(context.instance, graph.partitions)
        env = pipeline.env(policy)
        results = {}
        for partition in context.partition_keys if node.partitioned else [None]:
            writer = (runtime.shard_writer(context.instance, env.ledger, context.run_id, context.get_step_execution_context().step.key,
                                           partition, context.log.info) if partition else contextlib.nullcontext())
            with writer:
                started = time.perf_counter()
                result = compute_node(NodeRun(env, node, partition, "ingest", context.run_id, log=context.log.info))
                results[partition] = events.timed(result, time.perf_counter() - started)
        # Dagster materialises every partition of the step from this one result (with the input versions it
        # records); a step of several partitions reports their versions combined and a table of each.
        yield dg.MaterializeResult(asset_key=node.name, **_reported(results))
        blocking = []
        for partition, result in results.items():
            yield from events.check_evaluations(node, partition, result)
            blocking += events.blocking_checks(node, partition, result)
        if blocking:
            raise runtime.blocked(blocking)

    return _asset


def _reported(results: dict) -> dict:
    """The data version and metadata of an asset step's result: one partition's own, or several combined."""
    if len(results) == 1:
        (result,) = results.values()
        return {"data_version": dg.DataVersion(result.data_version), "metadata": events.to_metadata(result.metadata)}
    combined = hashlib.sha256("".join(f"{p}={r.data_version};" for p, r in sorted(results.items())).encode()).hexdigest()
    rows = [dg.TableRecord({"partition": p, "data_version": r.data_version[:16], "changed": r.changed,
                            "compute_seconds": float(r.metadata.get("compute_seconds", 0.0) or 0.0)}) for p, r in sorted(results.items())]
    return {"data_version": dg.DataVersion(combined), "metadata": {
        "partitions": len(results),
        "partition_versions": dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=[
            dg.TableColumn("partition", "string"), dg.TableColumn("data_version", "string"), dg.TableColumn("changed", "bool"),
            dg.TableColumn("compute_seconds", "float")]))}}


def on_time_check(late: list[dict]) -> dg.AssetCheckResult:
    """Fails while any live request is overdue (ERROR), or due soon, stuck, blocked or waiting for review (WARN)."""
    overdue = [r for r in late if "overdue" in r["why"]]
    return dg.AssetCheckResult(
        check_name=names.ON_TIME_CHECK, passed=not late,
        severity=dg.AssetCheckSeverity.ERROR if overdue else dg.AssetCheckSeverity.WARN,
        metadata={"overdue": len(overdue), "due_soon_or_stuck": len(late) - len(overdue),
                  "needs_review": sum(r["status"] == "needs_review" for r in late), "blocked": sum(bool(r["blocked_by"]) for r in late),
                  "requests": dg.MetadataValue.md("\n".join(f"- `{r['request_id']}` ({r['status']}): {r['why']}" for r in late[:50])
                                                   or "_(none)_")},
    )


def recipients_check(book, policy: Policy) -> dg.AssetCheckResult:
    """Fails (ERROR) while a notice to a recipient is a dead letter; warns while notices wait for a confirmation."""
    dead = book.notices.list(status=["dead"])
    waiting = book.notices.list(status=["pending"])
    lines = [f"- `{n['request_id']}` → {n['recipient']} ({n['kind']}): dead letter after {n['attempts']} attempts, last {n['last_error']}"
             for n in dead[:50]]
    lines += [f"- `{n['request_id']}` → {n['recipient']} ({n['kind']}): waiting, {n['attempts']} attempts" for n in waiting[:20]]
    return dg.AssetCheckResult(
        check_name=names.RECIPIENTS_CHECK, passed=not dead and not waiting,
        severity=dg.AssetCheckSeverity.ERROR if dead else dg.AssetCheckSeverity.WARN,
        description=(f"{len(dead)} notices never confirmed (dead letters): tell those recipients another way" if dead else
                     f"{len(waiting)} notices waiting for confirmation" if waiting else "every recipient confirmed"),
        metadata={"dead_letters": len(dead), "waiting": len(waiting), "recipients": len(policy.recipients),
                  "notices": dg.MetadataValue.md("\n".join(lines) or "_(none)_")})


def build_assets(policy: Policy, graph: Graph) -> list:
    partitions = shard_partitions(graph)
    certificates = dg.AssetSpec(
        graph.certificate_node,
        group_name="erasure",
        owners=policy.owners,
        # The leaves of the graph, not every node: each asset an erasure reaches flows into one of them, so the
        # lineage still shows all of it upstream of the certificates, without an edge from every asset.
        deps=graph.leaves,
        kinds={"ledger"},
        description=("Erasure certificates issued by erasure runs (request ids in the run's tags), each after every claim "
                     "was verified against the stores. Materialised only by erasure_job."),
    )

    @dg.asset_check(asset=graph.certificate_node, name=names.ON_TIME_CHECK, blocking=False,
                    description=f"No live erasure request is past its due date, due within {names.DUE_SOON.days} days, stuck "
                                f"in a non-final state for more than {names.STUCK_AFTER.seconds // 3600} hours, blocked by a "
                                "cause outside it, or waiting for a person's review (look-alike ids).")
    def requests_on_time(pipeline: PipelineResource) -> dg.AssetCheckResult:
        return on_time_check(pipeline.book().requests.overdue(dt.datetime.now(dt.UTC), within=names.DUE_SOON, stuck_after=names.STUCK_AFTER))

    @dg.asset_check(asset=graph.certificate_node, name=names.RECIPIENTS_CHECK, blocking=False,
                    description=("Every notice to a recipient (processor, service provider, third party) and every DRP status "
                                 "callback was confirmed: fails while one is a dead letter, warns while one waits."))
    def recipients_confirmed(pipeline: PipelineResource) -> dg.AssetCheckResult:
        return recipients_check(pipeline.book(), policy)

    return [*(_node_asset(n, policy, graph, partitions) for n in graph.nodes), certificates, requests_on_time, recipients_confirmed]
