"""Proof: re-check, against the stores as they are now, that a subject is gone.

Used inside the erasure run (before a certificate is issued) and by ``erasure-pipeline verify`` later.
What each node proves is its kind's business (``Kind.prove``); this module adds what no node owns:
the tombstone, the landing files and the ingest staging area, ids quoted in texts, the merges'
inputs, every partition against its recorded version, and the provenance index. No Dagster import.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection

from erasure_pipeline.core import contracts, identity
from erasure_pipeline.core.errors import PipelineError
from erasure_pipeline.core.tombstones import mentioned_keys
from erasure_pipeline.kinds.base import BATCH, Env, Finding, input_key, read_together
from erasure_pipeline.kinds.raw_rows import key_counts, proof_manifest
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores import landing_index
from erasure_pipeline.stores.landing import landing_files, read_landing, staged_files

MERGE_INPUTS_CLAIM = "published merge was built from the current shard partitions"
STORED_CLAIM = "stored partition is what its last materialisation recorded"
READABLE_CLAIM = "stored objects can be read"


def _guarded(target: str, check: Callable[[], list[Finding]]) -> list[Finding]:
    """The findings of ``check``; a store that cannot be read is one finding naming it, never a traceback."""
    try:
        return check()
    except PipelineError as exc:  # names the object, never a value
        return [Finding(READABLE_CLAIM, target, False, str(exc))]
    except Exception as exc:  # noqa: BLE001 (a damaged object fails in the reader's own way; its message may quote data)
        return [Finding(READABLE_CLAIM, target, False, f"cannot be read ({type(exc).__name__})")]


def verify_subject(subject_key: str, env: Env, cache: dict | None = None, partitions: Collection[str] | None = None) -> list[Finding]:
    """Every claim an erasure certificate makes about one subject, checked now.

    Shard-level and merge-level claims (the model retrain, k-anonymity, what merges were built
    from) do not depend on the subject; pass one ``cache`` dict when verifying many subjects.
    ``partitions``: the shard partitions the erasure rewrote (the subject's own and any whose text named
    them); the merges must be built from their current state. None: from every partition's, as ``verify``
    checks later. The certificate step passes them: another run's shard step may rewrite an unrelated
    shard between its last look and its proof (a cycle writing sixteen shards), which says nothing about
    this subject.
    """
    cache = {} if cache is None else cache
    part = identity.partition_key(identity.shard_of(subject_key, env.policy.shards))
    held = env.ledger.requests.live_for(subject_key)
    out = [Finding("tombstone keeps the subject out of future ingests", "ledger.tombstones",
                   subject_key in env.ledger.tombstones.active(identity.shard_from_partition(part)),
                   "on hold" if held and held["status"] == "on_hold" else "")]
    for node in env.graph.nodes:
        p = part if node.partitioned else None
        out += _guarded(f"{node.name}[{p}]" if p else node.name, lambda n=node, p=p: env.kinds.get(n.kind).prove(env, n, subject_key, p, cache))
    out += _guarded("landing", lambda: _sources(env, subject_key, part, cache))
    merges = ("merges", None if partitions is None else frozenset({part, *partitions}))
    if merges not in cache:
        cache[merges] = merge_input_claims(env, merges[1]) + recorded_version_claims(env, None)
    if ("recorded", part) not in cache:
        cache[("recorded", part)] = recorded_version_claims(env, part)
    out += cache[merges] + cache[("recorded", part)]
    prov = _provenance_rows(env, subject_key, part, cache)
    out.append(Finding("provenance lists no data for the subject", "ledger.provenance", not prov, f"{prov} rows"))
    if env.keys is not None:
        held = env.keys.has_key(subject_key)
        out.append(Finding("no data key of the subject in the key store (every sealed copy of their fields is unreadable)",
                           "ledger.data_keys", not held, "a data key is still held" if held else "none held"))
    return out


def prove_together(subject_keys: Collection[str], env: Env, cache: dict) -> dict:
    """Name a batch's subjects in ``cache``: each kind's proof then reads a partition once for all of its subjects
    there (their buckets, the vector shard's count and file scan), not once per subject. Returns ``cache``."""
    batch: dict[str, set[str]] = {}
    for key in subject_keys:
        batch.setdefault(identity.partition_key(identity.shard_of(key, env.policy.shards)), set()).add(key)
    cache[BATCH] = {p: frozenset(keys) for p, keys in batch.items()}
    return cache


def _provenance_rows(env: Env, subject_key: str, part: str, cache: dict) -> int:
    """The ledger's provenance rows of the subject: one query for every subject of the batch proved together
    in its shard, where 100 subjects made 100."""
    def query(together: frozenset[str]) -> Counter:
        return Counter(r["subject_key"] for r in env.ledger.nodes.provenance_for(sorted(together)))
    return read_together(cache, ("provenance", part), part, subject_key, query)[subject_key]


def _staged_rows(env: Env, subject_key: str, part: str, cache: dict) -> int:
    """The subject's rows in the shard's ingest staging area: its files listed and read once for every subject of
    the batch proved together in its shard (each subject listed and read them again); only their rows counted."""
    def read(together: frozenset[str]) -> Counter:
        held: Counter = Counter()
        for name in staged_files(env.lake, shard=identity.shard_from_partition(part)):
            keys = lk.table_from_bytes(env.lake.read_bytes(name), ["subject_key"])["subject_key"]
            held.update(keys[keys.isin(together)].tolist())
        return held
    return read_together(cache, ("staged", part), part, subject_key, read)[subject_key]


def _sources(env: Env, subject_key: str, part: str, cache: dict) -> list[Finding]:
    """Landing files, the ingest staging area, and ids quoted in the text columns of landing and the lake."""
    rule = env.ledger.tombstones.rule_of(subject_key)
    rule = tuple(rule.split(",")) if rule else (() if rule == "" else env.keyer.rule)
    in_landing, named_in_landing = _landing_holding(env, subject_key, rule, cache)
    staged = _staged_rows(env, subject_key, part, cache)
    mentions = named_in_landing + _lake_mentions(env, subject_key, rule, cache)
    return [Finding("no rows of the subject in landing files", "landing", in_landing == 0, f"{in_landing} rows"),
            Finding("no rows of the subject in an ingest's staging area", "lake/_staging", staged == 0, f"{staged} rows"),
            Finding("no text column of the lake or landing holds the subject's id", "text columns", mentions == 0, f"{mentions} mentions")]


def _untrusted_landing(env: Env, cache: dict) -> set[str]:
    """Landing files the index cannot speak for: never indexed, or whose bytes are not what the pipeline last
    left there (the hash it recorded when an ingest took the file or a scrub rewrote it): a file restored
    from a backup, edited, or re-delivered under a used name. Every file's bytes are hashed once per batch."""
    if "untrusted_landing" not in cache:
        indexed = landing_index.indexed_files(env.lake, cache["landing_batches"])
        recorded = env.ledger.runs.landing_hashes()
        cache["untrusted_landing"] = {f.name for f in landing_files(env.landing, contracts.contracts_for(env.policy))
                                      if f.name not in indexed or recorded.get(f.name) != lk.object_hash(env.landing, f.name)}
    return cache["untrusted_landing"]


def _landing_holding(env: Env, subject_key: str, rule: tuple[str, ...], cache: dict) -> tuple[int, int]:
    """(rows of the subject, mentions of their id in texts) in landing: the files the landing index names
    for them, and every file the index cannot speak for (``_untrusted_landing``), read now."""
    if "landing_batches" not in cache:
        cache["landing_batches"] = landing_index.batches(env.lake)
    holding = landing_index.files_holding(env.lake, [subject_key], env.policy.shards, env.policy.lake.buckets, cache["landing_batches"])
    untrusted = _untrusted_landing(env, cache)
    rows = named = 0
    keyer = env.keyer.under(rule)
    for f in landing_files(env.landing, contracts.contracts_for(env.policy)):
        if f.contract.is_lookup or (f.name not in holding and f.name not in untrusted and rule == env.keyer.rule):
            continue
        if ("landing", f.name) not in cache:  # parsed once per batch: the subjects' rows and the keys its texts name
            df = read_landing(env.landing, f, env.keyer)
            cache[("landing", f.name)] = (key_counts(df["subject_key"]), df[list(f.contract.texts)] if f.contract.texts else None)
        counts, texts = cache[("landing", f.name)]
        rows += int(counts.get(subject_key, 0))
        named += mentioned_keys(texts, f.contract.texts, keyer).get(subject_key, 0) if texts is not None else 0
    return rows, named


def _lake_mentions(env: Env, subject_key: str, rule: tuple[str, ...], cache: dict) -> int:
    """Mentions of the subject's id in the text columns of the lake: the buckets whose manifest names
    them, read now (under an earlier identity rule, every text bucket)."""
    keyer = env.keyer.under(rule)
    tables = contracts.contracts_for(env.policy)
    count = 0
    for node in env.graph.raw_nodes:
        texts = tables[node.table].texts
        if not texts:
            continue
        for p in env.partitions:
            manifest = proof_manifest(env, node.name, p, cache)
            if manifest is None:
                continue
            wanted = manifest.mentioning(subject_key) if rule == env.keyer.rule else None
            if wanted == []:
                continue
            df = bk.read_buckets(env.lake, node.name, p, wanted, manifest, columns=[*texts], keys=env.keys)
            count += mentioned_keys(df, texts, keyer).get(subject_key, 0)
    return count


def current_inputs(env: Env, name: str, partitions: Collection[str] | None = None) -> dict[str, str | None]:
    """Content hashes of every input object of a merge as they are stored now (of a partitioned input, those of
    ``partitions`` only, when given: each is a whole shard's object read and hashed).

    A merge records the same map for what it read; ``verify`` compares the two, so a merge that
    was not built from the current shard partitions (e.g. an old copy restored) is found.
    """
    shards = env.partitions if partitions is None else [p for p in env.partitions if p in partitions]
    out: dict[str, str | None] = {}
    for parent in env.graph.node(name).parents:
        p_node = env.graph.node(parent)
        for p in shards if p_node.partitioned else [None]:
            obj = env.kind_of(parent).object_name(p_node, p)
            out[input_key(parent, p)] = None if obj is None else lk.object_hash(env.lake, obj)
    return out


def merge_input_claims(env: Env, partitions: Collection[str] | None = None) -> list[Finding]:
    """Each published merge records the content hash of every input it read; they must be the inputs
    stored now (``partitions``: those of these shard partitions, and every unpartitioned one). A merge
    restored from before an erasure (or built while a shard changed) fails here."""
    out = []
    for node in env.graph.merge_nodes:
        out += _guarded(node.name, lambda n=node: _merge_inputs(env, n, partitions))
    return out


def _merge_inputs(env: Env, node, partitions: Collection[str] | None) -> list[Finding]:
    out = []
    current = current_inputs(env, node.name, partitions)
    for obj, recorded in env.kind_of(node.name).recorded_inputs(env, node):
        if recorded is None:
            out.append(Finding(MERGE_INPUTS_CLAIM, obj, False, "not materialised, or written without its inputs"))
            continue
        stale = sorted(k for k in current if recorded.get(k) != current[k])
        out.append(Finding(MERGE_INPUTS_CLAIM, obj, not stale,
                           f"{len(current)} inputs match" if not stale else f"differs from: {', '.join(stale[:5])}"))
    return out


def recorded_version_claims(env: Env, partition: str | None) -> list[Finding]:
    """Every node partition of one shard (or, with None, every merge) holds what the ledger recorded when
    it was last materialised: a corrupted object, or an old copy restored in its place, fails here."""
    nodes = [n for n in env.graph.nodes if n.partitioned == (partition is not None) and env.kind_of(n.name).personal]
    records = env.ledger.nodes.records(partition, [n.name for n in nodes])
    out = []
    for node in nodes:
        record = records.get((node.name, partition or "all"))
        target = f"{node.name}[{partition}]" if partition else node.name
        try:
            stored = env.kind_of(node.name).stored_version(env, node, partition)
        except Exception as exc:  # noqa: BLE001 (damage: one finding naming the object, never a traceback)
            out.append(Finding(STORED_CLAIM, target, False, str(exc) if isinstance(exc, PipelineError) else f"cannot be read ({type(exc).__name__})"))
            continue
        if record is None:
            out.append(Finding(STORED_CLAIM, target, stored is None, "no record" + ("" if stored is None else ", yet an object is stored")))
        else:
            out.append(Finding(STORED_CLAIM, target, stored == record["data_version"],
                               "matches" if stored == record["data_version"] else
                               f"recorded {record['data_version'][:12]}, stored {(stored or 'nothing')[:12]}"))
    return out
