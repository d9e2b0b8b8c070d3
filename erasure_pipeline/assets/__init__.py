"""The asset graph, made from the graph table: one asset per node, plus the certificates.

Each asset's body is the node's computation (``nodes.compute``), the same function the jobs run, so
materialising a partition by hand in the UI and a job's shard step write the same thing. Shard nodes
are partitioned by ``shard_00`` … and depend on the same partition of their parents; merges are
unpartitioned and read every shard. Every writing asset runs in the pool ``tags.POOL``.

``erasure_certificates`` is an external asset: it shows in the lineage, and only erasure runs report
its materialisations (there is no "Materialize" button that could replace a certificate). Its check
``requests_on_time`` lists requests past or near their due date and any stuck in a non-final state.
"""


import datetime as dt

import dagster as dg

from erasure_pipeline import identity, runtime, tags
from erasure_pipeline.graph import Graph, Node
from erasure_pipeline.nodes import Env, NodeRun, compute
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, LandingResource, LedgerResource, PepperResource, VectorStoreResource

DUE_SOON = dt.timedelta(days=7)
STUCK_AFTER = dt.timedelta(hours=6)


def shard_partitions(policy: Policy) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(identity.partition_keys(policy.shards))


def _node_asset(node: Node, policy: Policy, graph: Graph, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=node.name,
        group_name=node.group,
        partitions_def=partitions if node.partitioned else None,
        deps=list(node.parents),
        code_version=runtime.code_version(policy, graph, node.name),
        check_specs=[dg.AssetCheckSpec(c.name, asset=node.name, blocking=c.blocking, description=c.description) for c in node.checks],
        kinds=set(node.kinds),
        description=node.description,
        pool=tags.POOL,
    )
    def _asset(
        context: dg.AssetExecutionContext, lake: LakeResource, landing: LandingResource, vectors: VectorStoreResource,
        ledger: LedgerResource, pepper: PepperResource,
    ) -> dg.MaterializeResult:
        runtime.require_pool(context.instance)
        env = Env(policy, graph, lake.get(), landing.get(), vectors.get(), ledger.get(), pepper.get())
        partition = context.partition_key if node.partitioned else None
        result = compute(NodeRun(env, node, partition, "ingest", context.run_id, log=context.log.info))
        return dg.MaterializeResult(
            data_version=dg.DataVersion(result.data_version),
            metadata=runtime.to_metadata(result.metadata),
            check_results=[runtime.check_result(c) for c in result.checks],
        )

    return _asset


def build_assets(policy: Policy, graph: Graph) -> list:
    partitions = shard_partitions(policy)
    certificates = dg.AssetSpec(
        graph.certificate_node,
        group_name="erasure",
        deps=graph.names,
        kinds={"ledger"},
        description=("Erasure certificates issued by erasure runs (request ids in the run's tags), each after every claim "
                     "was verified against the stores. Materialised only by erasure_job."),
    )

    @dg.asset_check(asset=graph.certificate_node, name="requests_on_time", blocking=False,
                    description=f"No live erasure request is past its due date, due within {DUE_SOON.days} days, or stuck "
                                f"in a non-final state for more than {STUCK_AFTER.seconds // 3600} hours.")
    def requests_on_time(ledger: LedgerResource) -> dg.AssetCheckResult:
        return on_time_check(ledger.get().overdue(dt.datetime.now(dt.UTC), within=DUE_SOON, stuck_after=STUCK_AFTER))

    return [*(_node_asset(n, policy, graph, partitions) for n in graph.nodes), certificates, requests_on_time]


def on_time_check(late: list[dict]) -> dg.AssetCheckResult:
    overdue = [r for r in late if "overdue" in r["why"]]
    return dg.AssetCheckResult(
        passed=not late, severity=dg.AssetCheckSeverity.ERROR if overdue else dg.AssetCheckSeverity.WARN,
        metadata={"overdue": len(overdue), "due_soon_or_stuck": len(late) - len(overdue),
                  "requests": dg.MetadataValue.md("\n".join(f"- `{r['request_id']}` ({r['status']}): {r['why']}" for r in late[:50])
                                                   or "_(none)_")},
    )
