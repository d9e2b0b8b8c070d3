"""Where a full build's memory peaks: RSS sampled through one in-process build, by the node (or claim phase) running.

    python -m benchmarks.build_memory --subjects 1000000

Writes the demo's landing set (in a child process: the generator's frames are not the pipeline's memory), then
materialises every asset once, as ``erasure_cost`` does, sampling this process's RSS every ``--every`` seconds on
a thread and noting what ran then: the claim's staging, the claim after staging (the retraction pass, the plan),
each node by name, or "between" (Dagster's own work between nodes). Prints the build's time and peak RSS, then
the peak per phase with the sealing lookups' size at that moment (``core/crypto``), largest first. Issue 26 aims
at a peak of at most 3 GiB at 1 000 000 subjects.
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from benchmarks._common import Timer, machine, peak_rss_mib, project_home, table
from benchmarks.erasure_cost import landing_arguments, write_synthetic_landing
from erasure_pipeline.app.demo import DEMO_POLICY


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    landing_arguments(ap)
    ap.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    args = ap.parse_args(argv)

    with project_home(DEMO_POLICY.read_text()):
        from erasure_pipeline.app.cli.common import quiet_dagster
        from erasure_pipeline.app.runner import get_instance, materialize_all
        from erasure_pipeline.core import crypto
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.defs import steps
        from erasure_pipeline.defs.pipeline import build_definitions
        from erasure_pipeline.erasure import plan

        quiet_dagster()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as child:
            sizes, files, _ids = child.submit(write_synthetic_landing, args).result()
        print(f"landing: {sizes} in {len(files)} files", flush=True)

        # What runs now, as the sampler sees it: the two functions a build spends its time in, wrapped.
        running = ["before the claim"]
        compute_node, stage = steps.compute_node, plan.stage

        def node(run):
            running[0] = run.node.name
            try:
                return compute_node(run)
            finally:
                running[0] = "between"

        def staging(*a, **kw):
            running[0] = "claim: staging"
            try:
                return stage(*a, **kw)
            finally:
                running[0] = "claim: after staging"

        steps.compute_node, plan.stage = node, staging
        peaks: dict[str, tuple[float, int]] = {}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                rss, phase = _rss_mib(), running[0]
                if rss > peaks.get(phase, (0.0, 0))[0]:
                    peaks[phase] = (rss, len(crypto._SEALED))
                time.sleep(args.every)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            defs = build_definitions(load_policy())
            with Timer() as build:
                built = materialize_all(defs, get_instance())
        finally:
            done.set()
            sampler.join()
            steps.compute_node, plan.stage = compute_node, stage
        assert built.success, "the full build failed"

    print()
    print(f"Machine: {machine()}")
    print(f"Data: {sizes['subjects']:,} subjects, {sizes['events']:,} events, {sizes['tickets']:,} tickets; the demo's declaration; "
          f"in-process executor, embedded back-ends; RSS sampled every {args.every} s")
    print(f"full build: {build.seconds:.1f} s; peak RSS of this process {peak_rss_mib():,.0f} MiB (the largest sample below can "
          "miss a peak shorter than the interval)\n")
    print(table(["running when sampled", "peak RSS sampled (MiB)", "sealing lookups then (cells)"],
                [[phase, rss, cells] for phase, (rss, cells) in sorted(peaks.items(), key=lambda kv: -kv[1][0])]))


if __name__ == "__main__":
    main()
