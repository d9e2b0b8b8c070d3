"""What the ingest's staging area costs as Parquet and as Arrow IPC: the same staged files, written and read back.

    python -m benchmarks.staging_format --subjects 10000

The claim step writes each landing file's rows split by shard into the staging area, and each shard's raw step
reads its staged files back, within the run (``stores.landing.stage``, ``read_staged``). This takes the demo's
landing tables for ``--subjects`` subjects (one landing file per table, as ``erasure_cost`` lays out 10 000
subjects a file), keys them, splits each by shard as staging does (S = ``--shards``), and writes and reads every
staged file ``--repeats`` times in each format: Parquet as the lake writes it (``lake.arrow_to_bytes``: zstd,
statistics) and Arrow IPC as staging writes it now (``lake.arrow_to_ipc_bytes``: zstd). Plain columns (the
demo's declaration seals some; sealed cells are binary and compress alike in both). Prints milliseconds per
staged file (median of the repeats' totals divided by the files) and bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks._common import machine, table
from erasure_pipeline.app import demo
from erasure_pipeline.core.identity import Keyer
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.landing import key_frame

FORMATS = {"Parquet (zstd)": lk.arrow_to_bytes, "Arrow IPC (zstd)": lk.arrow_to_ipc_bytes}


def staged_tables(subjects: int, shards: int, seed: int) -> dict[str, list]:
    """Each landing table's rows split by shard, as Arrow tables (what ``stage`` writes, one file per shard)."""
    import pyarrow as pa

    keyer = Keyer(b"staging-format-benchmark", shards)
    out = {}
    for name, frame in demo.generate(subjects, seed).items():
        keyed = key_frame(frame, "subject_id", keyer)
        whole = pa.Table.from_pandas(keyed.drop(columns=["shard"]), preserve_index=False)
        shard_of = keyed["shard"].to_numpy()
        out[name] = [whole.filter(pa.array(shard_of == s)) for s in range(shards) if (shard_of == s).any()]
    return out


def measure(tables: list, write, repeats: int) -> tuple[float, float, int]:
    """(write ms per file, read ms per file, bytes of all files): medians over ``repeats`` passes."""
    writes, reads = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        blobs = [write(t) for t in tables]
        t1 = time.perf_counter()
        back = [lk.read_parquet(b, name="staged") for b in blobs]
        t2 = time.perf_counter()
        assert all(o.table.num_rows == t.num_rows for o, t in zip(back, tables, strict=True))
        writes.append(t1 - t0)
        reads.append(t2 - t1)
    n = len(tables)
    return statistics.median(writes) / n * 1000, statistics.median(reads) / n * 1000, sum(len(b) for b in blobs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    staged = staged_tables(args.subjects, args.shards, args.seed)
    rows = []
    for name, tables in staged.items():
        (pw, pr, pb), (iw, ir, ib) = (measure(tables, write, args.repeats) for write in FORMATS.values())
        per_file = sum(t.num_rows for t in tables) / len(tables)
        rows.append([name, len(tables), round(per_file), pw, iw, pw / iw, pr, ir, pr / ir, pb, ib])
    print(f"Machine: {machine()}")
    print(f"Staged files of one landing file of {args.subjects:,} subjects per table, split into S = {args.shards} shards; "
          f"median of {args.repeats} passes")
    print()
    print(table(["table", "staged files", "rows per file", "Parquet write (ms/file)", "IPC write (ms/file)", "write: Parquet / IPC",
                 "Parquet read (ms/file)", "IPC read (ms/file)", "read: Parquet / IPC", "Parquet bytes", "IPC bytes"], rows))


if __name__ == "__main__":
    main()
