"""The certifier: the last step of an erasure run, in the `erasure` group.

It runs after every blocking check of the run has passed, re-verifies each claim against
the stores, then records actions and issues one certificate per request, attached to the
run as Markdown metadata. In a run that is not an erasure batch it certifies nothing.
"""

import hashlib

import dagster as dg

from erasure_pipeline import identity
from erasure_pipeline.assets.common import MERGE_ASSETS, SHARD_ASSETS
from erasure_pipeline.erasure.certificate import to_markdown
from erasure_pipeline.erasure.service import BATCH_TAG, certify
from erasure_pipeline.erasure.verify import Stores
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, LandingResource, LedgerResource, PepperResource, VectorStoreResource

MAX_CERTIFICATES_IN_METADATA = 10


def _content_hash(record) -> str | None:
    value = record.asset_materialization.metadata.get("content_hash") if record else None
    return getattr(value, "value", None)


def materialization_versions(instance: dg.DagsterInstance, run_id: str, asset: str, partition: str | None) -> tuple[str | None, str | None, dict]:
    """(content hash before this run, content hash written by this run, this run's metadata)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=25
    ).records
    mine = next((i for i, r in enumerate(records) if r.run_id == run_id), None)
    if mine is None:
        before = records[0] if records else None
        return _content_hash(before), None, {}
    before = next((r for r in records[mine + 1 :] if r.run_id != run_id), None)
    meta = {k: getattr(v, "value", v) for k, v in records[mine].asset_materialization.metadata.items()}
    return _content_hash(before), _content_hash(records[mine]), meta


def build_erasure_assets(policy: Policy) -> list:
    @dg.asset(
        group_name="erasure",
        deps=[*SHARD_ASSETS, *MERGE_ASSETS],
        kinds={"sqlite"},
        description="Erasure certificates of the batch this run carries (request ids in its tags), after every proof passed.",
    )
    def erasure_certificates(
        context: dg.AssetExecutionContext, ledger: LedgerResource, lake: LakeResource, landing: LandingResource,
        vectors: VectorStoreResource, pepper: PepperResource,
    ) -> dg.MaterializeResult:
        batch_id = context.run.tags.get(BATCH_TAG)
        if not batch_id:
            return dg.MaterializeResult(data_version=dg.DataVersion("none"), metadata={"batch": "none", "certificates_issued": 0})
        book = ledger.get()
        batch = book.get_batch(batch_id)
        if batch is None:
            raise dg.Failure(f"erasure batch {batch_id} is not in the ledger")
        part = identity.partition_key(batch["shard"])
        versions, details = {}, {}
        scrubbed = 0
        for asset in batch["plan"]["assets"]:
            partition = None if asset in MERGE_ASSETS else part
            before, after, meta = materialization_versions(context.instance, context.run_id, asset, partition)
            versions[asset] = (before, after)
            scrubbed += int(meta.get("landing_files_scrubbed", 0) or 0)
            if meta.get("noncurrent_versions_purged"):
                details[asset] = f"rewritten; {meta['noncurrent_versions_purged']} old object versions purged"
            if asset == "vector_index" and "points_deleted_by_subject_filter" in meta:
                details[asset] = f"{meta['points_deleted_by_subject_filter']} points deleted by subject_key filter (batch); store compacted"
        if scrubbed:
            details["landing"] = f"{scrubbed} landing files rewritten without tombstoned subjects"
        stores = Stores(policy, lake.get(), landing.get(), vectors.get(), book, pepper.get())
        certs, digests, cache = [], [], {}
        for request in book.batch_requests(batch_id):
            if request["status"] == "completed":
                continue
            footprint = batch["plan"]["footprints"].get(request["request_id"], {})
            cert = certify(book, stores, request, footprint, run_id=context.run_id, batch_id=batch_id, versions=versions, details=details, cache=cache)
            certs.append(cert)
            digests.append(hashlib.sha256(repr(sorted(cert.items())).encode()).hexdigest())
        book.finish_batch(batch_id, "certified", context.run_id)
        context.log.info(f"batch {batch_id}: {len(certs)} certificates issued")
        shown = "\n\n---\n\n".join(to_markdown(c) for c in certs[:MAX_CERTIFICATES_IN_METADATA])
        return dg.MaterializeResult(
            data_version=dg.DataVersion(hashlib.sha256("".join(digests).encode()).hexdigest()),
            metadata={
                "batch": batch_id,
                "shard": part,
                "certificates_issued": len(certs),
                "request_ids": ", ".join(c["request_id"] for c in certs[:50]),
                "assets_rematerialised": ", ".join(batch["plan"]["assets"]),
                "certificates": dg.MetadataValue.md(shown or "_(none)_"),
            },
        )

    return [erasure_certificates]

