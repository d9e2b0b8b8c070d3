"""Erasing one subject from one shard partition of ``raw_events``: three layouts on the same data.

    pip install -e ".[bench]"    # deltalake, for the third layout only
    python -m benchmarks.lake_layout --subjects 200000 --shards 16 --buckets 16

The demo generator's events for ``--subjects`` subjects, keyed and sharded as the pipeline does; the
benchmark takes shard 0's rows and, for each layout, writes the partition, then erases ``--repeats``
subjects one at a time and reports the median time of one erasure (read what holds the subject,
drop their rows, write it back, remove what the old bytes were kept in) and what was rewritten:

- one file per shard partition (the first version's layout): read, filter and rewrite the whole file;
- bucket files (``storage.buckets``, the layout chosen): rewrite only the subject's bucket file and
  the manifest;
- Delta Lake (``deltalake``), the shard's table partitioned by bucket: ``DeltaTable.delete`` with a
  predicate on bucket and ``subject_key``, then ``vacuum`` of the removed file (retention 0).

After the erasures it byte-scans each layout's directory for the erased subjects' keys and raw ids:
Delta's ``_delta_log`` keeps per-file min/max statistics of every column, so a raw id can stay in the
log after ``vacuum`` (the reason the bucket layout was chosen; docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._common import Timer, machine, table


def _scan(root: Path, needles: list[bytes]) -> int:
    total = 0
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            total += sum(data.count(n) for n in needles)
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=200_000)
    ap.add_argument("--events-per-subject", type=float, default=16.0)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--buckets", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from erasure_pipeline.app import demo
    from erasure_pipeline.core import identity
    from erasure_pipeline.stores import buckets as bk
    from erasure_pipeline.stores import lake as lk
    from erasure_pipeline.stores.lake_backends import LocalLake

    events = demo.generate(args.subjects, 7, events_per_subject=args.events_per_subject, tickets_per_subject=0.0)["events"]
    pepper = b"benchmark-pepper"
    ids = events["subject_id"].drop_duplicates()
    keys = pd.Series(identity.subject_keys(pepper, ids), index=ids.values)
    events.insert(0, "subject_key", events["subject_id"].map(keys))
    events = events[identity.shards_of(events["subject_key"], args.shards) == 0].sort_values("event_id").reset_index(drop=True)
    shard_ids = events["subject_id"].drop_duplicates().tolist()
    rng = np.random.default_rng(0)
    victims = [shard_ids[i] for i in rng.choice(len(shard_ids), args.repeats, replace=False)]
    victim_keys = [keys[v] for v in victims]
    needles = [k.encode() for k in victim_keys] + [v.encode() for v in victims]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # One file per shard partition.
        store = LocalLake(Path(tmp) / "one_file")
        store.write_bytes("raw_events/shard_00.parquet", lk.table_to_bytes(events))
        times = []
        for key in victim_keys:
            with Timer() as t:
                df = lk.table_from_bytes(store.read_bytes("raw_events/shard_00.parquet"))
                store.write_bytes("raw_events/shard_00.parquet", lk.table_to_bytes(df[df["subject_key"] != key]))
            times.append(t.seconds)
        rows.append(["one file per shard partition", 1, float(np.median(times)) * 1000, _scan(Path(tmp) / "one_file", needles)])

        # Bucket files.
        store = LocalLake(Path(tmp) / "buckets")
        by_bucket = bk.buckets_of(events["subject_key"], args.buckets)
        manifest, _ = bk.write_buckets(store, "raw_events", "shard_00",
                                       {int(b): g for b, g in events.groupby(by_bucket)}, None, of=args.buckets)
        times = []
        for key in victim_keys:
            with Timer() as t:
                b = bk.bucket_of(key, args.buckets)
                df = bk.read_buckets(store, "raw_events", "shard_00", [b], manifest)
                manifest, changed = bk.write_buckets(store, "raw_events", "shard_00", {b: df[df["subject_key"] != key]}, manifest, of=args.buckets)
            assert changed == [b]
            times.append(t.seconds)
        rows.append([f"bucket files ({args.buckets} per partition) + manifest", 2, float(np.median(times)) * 1000,
                     _scan(Path(tmp) / "buckets", needles)])

        # Delta Lake, partitioned by bucket.
        try:
            import deltalake
        except ImportError:
            print("deltalake is not installed (pip install -e '.[bench]'): Delta row left out")
            deltalake = None
        if deltalake is not None:
            path = str(Path(tmp) / "delta")
            frame = events.assign(bucket=by_bucket.astype("int32"))
            deltalake.write_deltalake(path, frame, partition_by=["bucket"])
            dt = deltalake.DeltaTable(path)
            times, vacuums = [], []
            for key in victim_keys:
                b = bk.bucket_of(key, args.buckets)
                with Timer() as t:
                    metrics = dt.delete(f"bucket = {b} AND subject_key = '{key}'")  # benchmark data: hex keys only
                with Timer() as v:
                    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
                assert metrics["num_deleted_rows"] > 0
                times.append(t.seconds + v.seconds)
                vacuums.append(v.seconds)
            rows.append([f"Delta Lake {deltalake.__version__} partitioned by bucket, delete + vacuum", "1 + log entry",
                         float(np.median(times)) * 1000, _scan(Path(tmp) / "delta", needles)])
            log_keys = _scan(Path(path) / "_delta_log", [k.encode() for k in victim_keys])
            log_ids = _scan(Path(path) / "_delta_log", [v.encode() for v in victims])
            # Which raw ids does the log hold at all? Every file's min/max of subject_id, kept ones included.
            stats_ids = sum(p.read_bytes().count(b'subject_id\\":\\"') for p in (Path(path) / "_delta_log").glob("*.json"))
            print(f"Delta: in _delta_log after vacuum: erased keys {log_keys} times (the delete predicate is logged), erased raw ids "
                  f"{log_ids} times; min/max statistics naming a raw subject_id: {stats_ids} (vacuum alone: median "
                  f"{float(np.median(vacuums)) * 1000:.1f} ms)")

    print(f"Machine: {machine()}")
    print(f"raw_events shard 0 of {args.shards}: {len(events):,} rows, {len(shard_ids):,} subjects; "
          f"median of {args.repeats} one-subject erasures\n")
    print(table(["layout", "files rewritten", "erase 1 subject (ms)", "erased keys/ids' bytes left"], rows))


if __name__ == "__main__":
    main()
